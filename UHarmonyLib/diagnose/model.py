"""Model evidence: can a trained model's gate tell the sites apart, and what does its choice cost?

Every case goes through `segment_volumes` twice, as `uharmony evaluate` runs it (with its
`--no-mirror` option: test-time mirroring multiplies the cost by the mirrored axes + 1): with
the gate choosing the site weights, and (for sites the model knows) with the site given.
Gate accuracy says whether the model can personalize without being told the site; the
Dice gap (given - gated) says what a wrong or blurred choice costs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from UHarmonyLib.evaluation.report import MappedDataset, describe_run, map_dataset, score_cases
from UHarmonyLib.evaluation.scoring import WHOLE, mean_defined
from UHarmonyLib.model.weights import Bundle
from UHarmonyLib.progress import Reporter

GATE_ACCURACY_LOW = 0.5  # below this, the gate cannot personalize on its own
DICE_GAP = 0.05  # given - gated whole-lesion Dice worth a note


def map_for_model(bundle: Bundle, data: Path) -> MappedDataset:
    """The dataset in the model's channel and label spaces; refused (one line) before any work if it does not fit."""
    return map_dataset(bundle, data, "given" if bundle.config.site_required else "auto")


def model_evidence(
    bundle: Bundle, mapped: MappedDataset, device: torch.device, reporter: Reporter, passes: int | None = None
) -> dict[str, Any]:
    """Per site: cases, gate accuracy, whole-lesion Dice gated and given; overall gate accuracy and notes.

    Both passes are `evaluate`'s own (`score_cases`), with its log line and one progress step
    per case: stage "gated" for the gate's choice, "given" for the site named.
    """
    gated_ok = not bundle.config.site_required
    known = [i for i, c in enumerate(mapped.cases) if mapped.plan.sites[c.site].name in bundle.site_names]
    subset = dataclasses.replace(
        mapped, cases=[mapped.cases[i] for i in known], groups=[mapped.groups[i] for i in known]
    )
    reporter.log(describe_run(bundle, mapped, device, passes))
    run: dict[str, Any] = {"device": str(device), "precision": "", "passes": 1}
    gated: list[dict[str, Any]] = []
    given: list[dict[str, Any]] = []
    if gated_ok:
        gated, run = score_cases(bundle, mapped, "auto", device, reporter, passes, stage="gated")
    if known:
        given, run = score_cases(bundle, subset, "given", device, reporter, passes, stage="given")
    sites: dict[str, dict[str, Any]] = {}
    for s in mapped.plan.sites:
        rows = [r for r in gated if r["site"] == s.name]
        seen = s.name in bundle.site_names
        sites[s.name] = {
            "known_to_model": seen,
            "cases": len(s.cases),
            "gate_accuracy": mean_defined([float(r["chosen"] == s.name) for r in rows]) if seen else None,
            "dice_gated": mean_defined([r["dice"].get(WHOLE) for r in rows]),
            "dice_given": mean_defined([r["dice"].get(WHOLE) for r in given if r["site"] == s.name]),
        }
    hits = [float(r["chosen"] == r["site"]) for r in gated if sites[r["site"]]["known_to_model"]]
    accuracy = mean_defined(hits)
    notes = []
    if accuracy is not None and accuracy < GATE_ACCURACY_LOW:
        notes.append(
            f"the gate recognizes only {accuracy:.0%} of the cases' sites: personalization needs the site named "
            "(--site) or more training on these sites"
        )
    for name, figures in sites.items():
        given_dice, gated_dice = figures["dice_given"], figures["dice_gated"]
        if given_dice is not None and gated_dice is not None and given_dice - gated_dice >= DICE_GAP:
            notes.append(f"{name}: the gate's choice costs {given_dice - gated_dice:.2f} whole-lesion Dice")
    unknown = [n for n, figures in sites.items() if not figures["known_to_model"]]
    if unknown:
        notes.append(f"the model never saw {', '.join(unknown)}: `uharmony add-site` personalizes it to them")
    return {
        "model": bundle.label_text,
        "path": str(bundle.path),
        "gate_accuracy": accuracy,
        "mean_dice_gated": mean_defined([s["dice_gated"] for s in sites.values()]),
        "mean_dice_given": mean_defined([s["dice_given"] for s in sites.values()]),
        "sites": sites,
        "notes": notes,
        "segmentations": len(gated) + len(given),
        **run,
    }
