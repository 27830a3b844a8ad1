"""Scoring a model bundle on a labelled MSD dataset: per case, per site, and the gate's confusion.

The dataset is read as training reads it (`plan_training`: sites, channels, label groups
with coarse annotations), then moved into the model's spaces by name, because the model's
channel and label order need not be the dataset's: each dataset channel goes to the model
channel of the same name (model channels the dataset lacks stay all-zero, as in training),
each dataset label to the model label of the same name or, for a coarse label, to the labels
its `merges` lists. Every case goes through `segment_volumes` as `uharmony segment` runs it
and is scored with the validation's own functions, in the labels its site annotates, and
with lesion-wise Dice (evaluation/lesionwise.py), which counts each lesion once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import SimpleITK as sitk
import torch

from UHarmonyLib.data.cases import load_case
from UHarmonyLib.data.datasets import read_dataset_json
from UHarmonyLib.data.plan import Plan, PlannedCase, plan_training
from UHarmonyLib.errors import InputError
from UHarmonyLib.evaluation.scoring import WHOLE, lesion_scores, mean_defined, score_case
from UHarmonyLib.inference.engine import mirror_flips, segment_volumes
from UHarmonyLib.inference.gate_decision import GateDecision
from UHarmonyLib.model.weights import Bundle
from UHarmonyLib.progress import Reporter


@dataclass
class MappedDataset:
    """A dataset's cases in the model's channel order, with label groups in the model's label values."""

    file: Path
    plan: Plan
    cases: list[PlannedCase]  # `channels` are model channel indices
    groups: list[list[list[int]]]  # per case: group index -> model label values (group 0: background)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def map_channels(plan: Plan, bundle: Bundle, file: Path) -> list[int]:
    """Model channel index of each dataset channel, by name; a channel the model lacks is refused."""
    model = bundle.channel_names
    unknown = next((c for c in plan.channels if c not in model), None)
    if unknown is not None:
        raise InputError(f"{file}: channel '{unknown}' is not one of the model's channels ({', '.join(model)})")
    return [model.index(c) for c in plan.channels]


def map_labels(plan: Plan, bundle: Bundle, file: Path, merges: dict[str, list[str]]) -> list[list[int]]:
    """Model label values of each dataset class (by plan class index - 1): by name, or a coarse label's merges."""
    values = {lab["name"]: int(lab["value"]) for lab in bundle.labels}
    out = []
    for name in plan.label_names:
        members = [name] if name in values else merges.get(name, [])
        if not members or any(m not in values for m in members):
            raise InputError(f"{file}: label '{name}' is not one of the model's labels ({', '.join(values)})")
        out.append(sorted(values[m] for m in members))
    return out


def model_groups(groups: Sequence[Sequence[int]], classes: list[list[int]], values: list[int]) -> list[list[int]]:
    """A case's label groups in model label values; model labels the case does not annotate join background."""
    covered = [sorted({v for c in g for v in classes[c - 1]}) for g in groups[1:]]
    taken = {v for g in covered for v in g}
    return [[0, *(v for v in values if v not in taken)], *covered]


def _merges(file: Path) -> dict[str, list[str]]:
    _, data = read_dataset_json(file)
    return {str(k): [str(m) for m in v] for k, v in (data.get("merges") or {}).items()}


def map_dataset(bundle: Bundle, data: Path, site_mode: str) -> MappedDataset:
    """Read and check the dataset against the model before any case is segmented; one-line refusals."""
    plan = plan_training([data], val_fraction=0.0, seed=0)
    file = Path(plan.datasets[0]["path"])
    channels = map_channels(plan, bundle, file)
    classes = map_labels(plan, bundle, file, _merges(file))
    if site_mode == "given":
        unknown = next((s.name for s in plan.sites if s.name not in bundle.site_names), None)
        if unknown is not None:
            raise InputError(
                f"{file}: site '{unknown}' is not one of the model's sites ({', '.join(bundle.site_names)}); "
                "--site given needs every case's site to be one"
            )
    elif bundle.config.site_required:
        raise InputError(f"{bundle.path}: this model ({bundle.config.norm}) has no domain gate; use --site given")
    values = [int(lab["value"]) for lab in bundle.labels]
    return MappedDataset(
        file=file,
        plan=plan,
        cases=[dataclasses.replace(c, channels=[channels[k] for k in c.channels]) for c in plan.cases],
        groups=[model_groups(c.groups, classes, values) for c in plan.cases],
    )


def _gate_fields(decision: GateDecision) -> dict[str, Any]:
    return {
        "chosen": decision.chosen,
        "probabilities": {s: round(float(p), 4) for s, p in zip(decision.sites, decision.probabilities)},
        "entropy": round(decision.entropy, 4),
        "familiar": decision.familiar,
        "distance": _round(decision.distance),
        "nearest_site": decision.nearest,
    }


def describe_run(bundle: Bundle, mapped: MappedDataset, device: torch.device, passes: int | None = None) -> str:
    """The log line before the cases are segmented: what runs on what, and whether it mirrors (the slow part)."""
    count = len(mirror_flips(bundle, passes))
    if count == 1:
        mirroring = "one pass, without test-time mirroring" + (" (the default)" if passes is None else "")
    else:
        mirroring = f"with test-time mirroring, {count} passes (the default is one, {count} times faster)"
    return f"model {bundle.label_text}: {len(mapped.cases)} cases from {mapped.file}; device {device}, {mirroring}"


def score_cases(
    bundle: Bundle,
    mapped: MappedDataset,
    site_mode: str,
    device: torch.device,
    reporter: Reporter,
    passes: int | None = None,
    stage: str = "evaluate",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Segment and score every case (one in memory at a time), one `stage` progress step per case.

    Returns the rows and the device, precision and passes used.
    """
    rows = []
    run: dict[str, Any] = {"device": str(device), "precision": "", "passes": 1}
    for i, (case, groups) in enumerate(zip(mapped.cases, mapped.groups)):
        site = mapped.plan.sites[case.site].name
        loaded = load_case(case, len(bundle.channel_names))
        result = segment_volumes(
            bundle,
            loaded.images,
            site=site if site_mode == "given" else "auto",
            device=device,
            passes=passes,
        )
        pred = sitk.GetArrayViewFromImage(result.labels)
        scores = score_case(pred, groups, case.label_names, loaded.groups_zyx, result.labels.GetSpacing()[::-1])
        lesions = lesion_scores(pred, groups, case.label_names, loaded.groups_zyx)
        rows.append(
            {
                "case": case.entry.case,
                "site": site,
                **_gate_fields(result.gate),
                "dice": {k: _round(d) for k, (d, _) in scores.items()},
                "hd95_mm": {k: _round(h, 3) for k, (_, h) in scores.items()},
                "lesion_dice": {k: _round(d) for k, d in lesions.items()},
            }
        )
        run = {"device": result.device, "precision": result.precision, "passes": result.passes}
        reporter.progress(stage, i + 1, len(mapped.cases))
    return rows, run


def _site_summary(rows: list[dict[str, Any]], seen: bool, site_given: bool) -> dict[str, Any]:
    """Means over a site's cases; gate accuracy for sites the model knows, else the share it flagged."""
    names = list(dict.fromkeys(k for r in rows for k in r["dice"]))
    return {
        "cases": len(rows),
        "seen": seen,
        "dice": {n: mean_defined([r["dice"].get(n) for r in rows]) for n in names},
        "hd95_mm": {n: mean_defined([r["hd95_mm"].get(n) for r in rows]) for n in names},
        "lesion_dice": {n: mean_defined([r["lesion_dice"].get(n) for r in rows]) for n in names},
        "gate_accuracy": mean_defined([float(r["chosen"] == r["site"]) for r in rows])
        if seen and not site_given
        else None,
        "unfamiliar_share": None if site_given else mean_defined([float(not r["familiar"]) for r in rows]),
    }


def summarize(rows: list[dict[str, Any]], sites: list[str], model_sites: list[str], site_given: bool) -> dict:
    """Per-site figures, the gate's confusion matrix (dataset sites x model sites) and its accuracy."""
    by_site = {s: [r for r in rows if r["site"] == s] for s in sites}
    summaries = {s: _site_summary(r, s in model_sites, site_given) for s, r in by_site.items()}
    confusion = None
    if not site_given:
        confusion = {s: {m: sum(r["chosen"] == m for r in by_site[s]) for m in model_sites} for s in sites}
    gate = [float(r["chosen"] == r["site"]) for r in rows if r["site"] in model_sites]
    return {
        "sites": summaries,
        "mean_dice_whole_lesion": mean_defined([s["dice"].get(WHOLE) for s in summaries.values()]),
        "mean_lesion_dice_whole_lesion": mean_defined([s["lesion_dice"].get(WHOLE) for s in summaries.values()]),
        "gate_accuracy": None if site_given else mean_defined(gate),
        "gate_confusion": confusion,
    }


def evaluate_dataset(
    bundle: Bundle,
    mapped: MappedDataset,
    site_mode: str,
    device: torch.device,
    reporter: Reporter,
    passes: int | None = None,
) -> dict[str, Any]:
    """The report body: dataset, per-case rows, per-site summaries and the gate's confusion."""
    rows, run = score_cases(bundle, mapped, site_mode, device, reporter, passes)
    dataset = mapped.plan.datasets[0]
    site_given = site_mode == "given"
    return {
        "dataset": {"path": dataset["path"], "name": dataset["name"], "sha256": dataset["sha256"]},
        "site_given": site_given,
        **run,
        **summarize(rows, [s.name for s in mapped.plan.sites], bundle.site_names, site_given),
        "cases": rows,
    }
