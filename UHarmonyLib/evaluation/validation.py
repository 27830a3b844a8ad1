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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk
import torch

from UHarmonyLib.data.cases import LoadedCase
from UHarmonyLib.data.plan import Plan, PlannedCase
from UHarmonyLib.evaluation.scoring import WHOLE, mean_defined, score_case
from UHarmonyLib.inference.engine import segment_volumes
from UHarmonyLib.model.weights import Bundle
from UHarmonyLib.nn.network import UHarmonyNet
from UHarmonyLib.progress import Reporter, SilentReporter


def evaluate(
    net: UHarmonyNet,
    card: dict[str, Any],
    plan: Plan,
    cases: Sequence[tuple[PlannedCase, LoadedCase]],
    device: torch.device,
    precision: str,
    reporter: Reporter | None = None,
    site_given: bool = False,
) -> dict[str, Any]:
    """Validation figures per site and overall; `score` is the mean whole-lesion Dice over sites.

    `site_given` names each case's site instead of asking the gate: a federated site scoring
    the current round's model knows who it is, and its gate is only fitted at the end.
    """
    reporter = reporter or SilentReporter()
    bundle = Bundle(Path("(training)"), card, net)
    was_training = net.training
    net.eval()
    per_site: dict[str, dict[str, Any]] = {}
    try:
        for i, (case, loaded) in enumerate(cases):
            site = plan.sites[case.site].name
            given = site_given or net.config.site_required
            result = segment_volumes(
                bundle,
                loaded.images,
                site=site if given else "auto",
                device=device,
                precision=precision,
                passes=1,  # no mirroring: validation runs often; the ranking of checkpoints is what counts
            )
            pred = sitk.GetArrayViewFromImage(result.labels)
            spacing = result.labels.GetSpacing()[::-1]
            entry = per_site.setdefault(site, {"cases": 0, "dice": {}, "hd95_mm": {}, "gate": []})
            entry["cases"] += 1
            scores = score_case(pred, case.groups, case.label_names, loaded.groups_zyx, spacing)
            for name, (d, h) in scores.items():
                entry["dice"].setdefault(name, []).append(d)
                entry["hd95_mm"].setdefault(name, []).append(h)
            if not given:
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
