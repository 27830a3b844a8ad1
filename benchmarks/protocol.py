"""The locked evaluation protocol that every accuracy benchmark follows (`benchmarks/protocol.json`).

Five design iterations were once chosen on the same test seeds that then reported their
gains; here the seeds are fixed in one file and split by purpose, so no benchmark can drift
back. Test cases come from `test_seeds`, and only in a final run (`--final`); every other
run, `--quick` included, scores on `development_seeds`, which is what designs are chosen
on. Replicate r trains on a fresh training-data draw from `training_seeds[r]` with that
same number as its training seed. Every scored case is kept (`cases_path` beside the
summary), and two arms are compared case by case inside each replicate with the
hierarchical bootstrap of `UHarmonyLib.evaluation.bootstrap`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from UHarmonyLib.data.cases import load_case
from UHarmonyLib.data.plan import plan_training
from UHarmonyLib.evaluation.bootstrap import hierarchical_ci, paired_differences
from UHarmonyLib.evaluation.scoring import WHOLE, lesion_scores, score_case
from UHarmonyLib.files.atomic import write_text_atomic
from UHarmonyLib.inference.engine import SegmentationResult, segment_volumes
from UHarmonyLib.model.weights import Bundle, load_bundle

PROTOCOL_JSON = Path(__file__).resolve().with_name("protocol.json")
SEED_LISTS = ("test_seeds", "development_seeds", "training_seeds")


@dataclass(frozen=True)
class Protocol:
    test_seeds: tuple[int, ...]  # test cases of final runs only
    development_seeds: tuple[int, ...]  # evaluation data while designs are chosen (and --quick)
    training_seeds: tuple[int, ...]  # replicate r: training-data draw and training seed
    replicates: int
    test_cases_per_site: int

    def evaluation_seeds(self, final: bool) -> tuple[int, ...]:
        """Seeds of a run's evaluation sets, in order: its k-th test set is drawn from element k."""
        return self.test_seeds if final else self.development_seeds

    def replicate_seeds(self, count: int | None = None) -> tuple[int, ...]:
        """Training seeds of the first `count` replicates (default: the protocol's number)."""
        count = self.replicates if count is None else count
        if not 1 <= count <= len(self.training_seeds):
            raise ValueError(f"{count} replicates asked for; the protocol lists {len(self.training_seeds)}")
        return self.training_seeds[:count]

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def load_protocol(path: Path = PROTOCOL_JSON) -> Protocol:
    """The protocol file, checked: integer seed lists that share no seed, positive counts."""
    data = json.loads(path.read_text(encoding="utf-8"))
    missing = [k for k in (*SEED_LISTS, "replicates", "test_cases_per_site") if k not in data]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    lists = {k: tuple(data[k]) for k in SEED_LISTS}
    for name, seeds in lists.items():
        if not seeds or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"{path}: {name} must be a non-empty list of distinct integers")
    for i, a in enumerate(SEED_LISTS):
        for b in SEED_LISTS[i + 1 :]:
            if set(lists[a]) & set(lists[b]):
                raise ValueError(f"{path}: {a} and {b} share seeds {sorted(set(lists[a]) & set(lists[b]))}")
    protocol = Protocol(
        **lists, replicates=int(data["replicates"]), test_cases_per_site=int(data["test_cases_per_site"])
    )
    if protocol.test_cases_per_site < 1:
        raise ValueError(f"{path}: test_cases_per_site must be at least 1")
    protocol.replicate_seeds()  # replicates within the training seeds
    return protocol


# ---------------------------------------------------------------- test cases


@dataclass
class EvalCase:
    case: str
    site: str
    images: list[sitk.Image]
    groups: list[list[int]]  # group index -> label values it covers (group 0: background, unannotated)
    label_names: list[str]  # the labels this case's site annotates, by group index 1..n
    truth_groups: np.ndarray  # group index per voxel, (z, y, x)


@dataclass
class EvalSet:
    channels: list[str]
    labels: list[str]
    cases: list[EvalCase]

    def only(self, site: str) -> EvalSet:
        return replace(self, cases=[c for c in self.cases if c.site == site])


def load_tests(dataset: Path) -> EvalSet:
    """Test cases read once, as training reads cases (missing channels as zero images)."""
    plan = plan_training([dataset], 0.0, 0)
    cases = []
    for case in plan.cases:
        loaded = load_case(case, len(plan.channels))
        site = plan.sites[case.site].name
        cases.append(EvalCase(case.entry.case, site, loaded.images, case.groups, case.label_names, loaded.groups_zyx))
    return EvalSet(plan.channels, plan.label_names, cases)


# ---------------------------------------------------------------- scores


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Scored:
    """One model's scores on one evaluation set: a record per case."""

    arm: str
    replicate: int
    records: list[dict[str, Any]] = field(default_factory=list)
    gate_accuracy: float | None = None

    def by_site(self, metric: str = "dice", label: str = WHOLE) -> dict[str, list[float]]:
        """Defined scores of `label` per site, sites in the order their cases came."""
        out: dict[str, list[float]] = {}
        for r in self.records:
            value = r[metric].get(label)
            out.setdefault(r["site"], []).extend([] if value is None else [value])
        return out

    def by_case(self, metric: str = "dice", label: str = WHOLE) -> dict[str, float | None]:
        return {r["case"]: r[metric].get(label) for r in self.records}


def case_record(arm: str, replicate: int, case: EvalCase, result: SegmentationResult, given: bool) -> dict[str, Any]:
    """One segmented case scored by the project's rule: Dice and HD95 per label the case annotates and the whole
    lesion, lesion-wise Dice, and the gate's state (choice, probabilities, entropy, distance to the bank)."""
    pred = sitk.GetArrayViewFromImage(result.labels)
    voxel = score_case(pred, case.groups, case.label_names, case.truth_groups, result.labels.GetSpacing()[::-1])
    lesions = lesion_scores(pred, case.groups, case.label_names, case.truth_groups)
    return {
        "arm": arm,
        "replicate": replicate,
        "case": case.case,
        "site": case.site,
        "site_mode": "given" if given else "auto",
        "chosen": result.gate.chosen,
        "probabilities": {site: round(float(p), 4) for site, p in zip(result.gate.sites, result.gate.probabilities)},
        "entropy": round(result.gate.entropy, 4),
        "distance": None if result.gate.distance is None else round(result.gate.distance, 4),
        "familiar": result.gate.familiar,
        "dice": {k: _round(d) for k, (d, _) in voxel.items()},
        "hd95_mm": {k: _round(h, 3) for k, (_, h) in voxel.items()},
        "lesion_dice": {k: _round(d) for k, d in lesions.items()},
    }


def score_bundle(
    model: Path | Bundle, tests: EvalSet, given: bool, device: torch.device, arm: str = "", replicate: int = 0
) -> Scored:
    """Every test case through `segment_volumes` (site named, or the gate deciding, one pass), as case records."""
    bundle = model if isinstance(model, Bundle) else load_bundle(model, device)
    if bundle.channel_names != tests.channels or [lab["name"] for lab in bundle.labels] != tests.labels:
        raise SystemExit(f"{bundle.path}: channels or labels differ from the test cases'")
    scored = Scored(arm or bundle.path.name, replicate)
    hits = []
    for case in tests.cases:
        site = case.site if given else "auto"
        result = segment_volumes(bundle, case.images, site=site, device=device, passes=1)
        scored.records.append(case_record(scored.arm, replicate, case, result, given))
        hits.append(float(result.gate.chosen == case.site))
    if not given and bundle.config.norm == "uharmony":
        scored.gate_accuracy = round(float(np.mean(hits)), 4)
    return scored


def compare(
    name: str, a: Sequence[Scored], b: Sequence[Scored], metric: str = "dice", label: str = WHOLE, seed: int = 0
) -> dict[str, Any]:
    """Arm b minus arm a, case by case within each replicate (a[r] with b[r]), with its hierarchical 95 % CI."""
    if len(a) != len(b) or not a:
        raise ValueError(f"{name}: {len(a)} replicates against {len(b)}")
    differences = [paired_differences(x.by_case(metric, label), y.by_case(metric, label)) for x, y in zip(a, b)]
    interval = hierarchical_ci(differences, seed=seed)
    return {
        "name": name,
        "a": a[0].arm,
        "b": b[0].arm,
        "metric": f"{metric} {label}",
        "diff_mean": round(interval.mean, 4),
        "ci95": [round(interval.low, 4), round(interval.high, 4)],
        "holds": interval.holds,
        "replicates": interval.replicates,
        "cases": interval.cases,
    }


def cases_path(summary: Path) -> Path:
    """Where a summary's per-case scores go: beside it, `NAME.cases.json`."""
    return summary.with_name(f"{summary.stem}.cases.json")


def write_case_scores(summary: Path, protocol: Protocol, final: bool, scored: Sequence[Scored]) -> Path:
    """Every case record of a run, in one JSON file beside its summary (atomically)."""
    path = cases_path(summary)
    doc = {
        "summary": summary.name,
        "evaluation": "test" if final else "development",
        "protocol": protocol.to_json(),
        "cases": [r for s in scored for r in s.records],
    }
    write_text_atomic(path, json.dumps(doc) + "\n")
    return path
