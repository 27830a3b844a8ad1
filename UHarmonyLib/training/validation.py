"""Per-site validation through the real inference engine, scored in each site's own labels.

Held-out cases go through `segment_volumes` exactly as `uharmony segment` runs them:
the gate picks the site weights (the DSBN baseline has no gate path, so its site is
given), and the result comes back on the case's own grid. Each of the site's labels is
scored against the union classes it covers, and "whole lesion" (everything outside the
site's background group) for every site, with MONAI's Dice and 95 % Hausdorff distance
(mm). Undefined values (an empty reference or prediction) are reported as null and
left out of the means.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric

from UHarmonyLib.bundle import Bundle
from UHarmonyLib.inference import segment_volumes
from UHarmonyLib.nn import UHarmonyNet
from UHarmonyLib.progress import Reporter, SilentReporter
from UHarmonyLib.training.cases import LoadedCase
from UHarmonyLib.training.plan import Plan, PlannedCase

WHOLE = "whole lesion"


def mean_defined(values: Sequence[float | None]) -> float | None:
    """Mean of the defined values (None left out), rounded for reports; None when none is defined."""
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 4) if kept else None


def _finite(x: torch.Tensor) -> float | None:
    v = float(x.reshape(-1)[0])
    return v if math.isfinite(v) else None


def score_masks(pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[float | None, float | None]:
    """(Dice, 95 % Hausdorff distance in mm) of two binary (z, y, x) masks; None where undefined."""
    p = torch.from_numpy(pred.astype(np.float32))[None, None]
    t = torch.from_numpy(truth.astype(np.float32))[None, None]
    if not t.any():
        return None, None
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=True)(p, t)
    if not p.any():
        return _finite(dice), None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(
            p, t, spacing=[float(s) for s in spacing_zyx]
        )
    return _finite(dice), _finite(hd)


def score_case(
    pred: np.ndarray,
    groups: Sequence[Sequence[int]],
    label_names: Sequence[str],
    truth_groups: np.ndarray,
    spacing_zyx: Sequence[float],
) -> dict[str, tuple[float | None, float | None]]:
    """(Dice, HD95) per label a case annotates, plus the whole lesion, scored in the case's own labels.

    `groups[g]` lists the predicted label values that group g covers (group 0: background and
    every value the case does not annotate); `truth_groups` holds the case's group index per voxel.
    """
    masks = {name: (np.isin(pred, groups[g]), truth_groups == g) for g, name in enumerate(label_names, start=1)}
    masks.setdefault(WHOLE, (~np.isin(pred, groups[0]), truth_groups > 0))
    return {name: score_masks(p, t, spacing_zyx) for name, (p, t) in masks.items()}


def evaluate(
    net: UHarmonyNet,
    card: dict[str, Any],
    plan: Plan,
    cases: Sequence[tuple[PlannedCase, LoadedCase]],
    device: torch.device,
    precision: str,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Validation figures per site and overall; `score` is the mean whole-lesion Dice over sites."""
    reporter = reporter or SilentReporter()
    bundle = Bundle(Path("(training)"), card, net)
    was_training = net.training
    net.eval()
    per_site: dict[str, dict[str, Any]] = {}
    try:
        for i, (case, loaded) in enumerate(cases):
            site = plan.sites[case.site].name
            result = segment_volumes(
                bundle,
                loaded.images,
                site=site if net.config.site_required else "auto",
                device=device,
                precision=precision,
                mirror=False,  # one pass: validation runs often; the ranking of checkpoints is what counts
            )
            pred = sitk.GetArrayViewFromImage(result.labels)
            spacing = result.labels.GetSpacing()[::-1]
            entry = per_site.setdefault(site, {"cases": 0, "dice": {}, "hd95_mm": {}, "gate": []})
            entry["cases"] += 1
            scores = score_case(pred, case.groups, case.label_names, loaded.groups_zyx, spacing)
            for name, (d, h) in scores.items():
                entry["dice"].setdefault(name, []).append(d)
                entry["hd95_mm"].setdefault(name, []).append(h)
            if not net.config.site_required:
                entry["gate"].append(float(result.gate.chosen == site))
            reporter.progress("validate", i + 1, len(cases))
    finally:
        net.train(was_training)
    sites = {
        site: {
            "cases": e["cases"],
            "dice": {k: mean_defined(v) for k, v in e["dice"].items()},
            "hd95_mm": {k: mean_defined(v) for k, v in e["hd95_mm"].items()},
            "gate_accuracy": mean_defined(e["gate"]),
        }
        for site, e in per_site.items()
    }
    whole = [s["dice"].get(WHOLE) for s in sites.values()]
    gates = [g for e in per_site.values() for g in e["gate"]]
    return {
        "validation_cases": len(cases),
        "mean_dice_whole_lesion": mean_defined(whole),
        "mean_hd95_whole_lesion_mm": mean_defined([s["hd95_mm"].get(WHOLE) for s in sites.values()]),
        "gate_accuracy": mean_defined(gates),
        "sites": sites,
    }
