"""`uharmony diagnose`: do the sites differ in appearance (harmonize the data), in structure
(personalize the model), in both, or in neither?

features.py measures every case, compare.py contrasts sites, decide.py turns the
evidence into a recommendation with explicit thresholds, model.py adds what a trained
model shows (optional), trials.py (`--trials`) trains each strategy briefly on held-out
splits and advises from the measured Dice instead of thresholds, and report.py writes the
HTML page; `summary.json` holds everything the page shows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from UHarmonyLib import __version__
from UHarmonyLib.data.cases import load_case
from UHarmonyLib.data.plan import Plan, plan_training
from UHarmonyLib.diagnose.compare import appearance_pairs, median_defined, structure_tests
from UHarmonyLib.diagnose.decide import appearance_findings, recommend, sample_cautions, structure_findings
from UHarmonyLib.diagnose.features import CaseFeatures, case_features
from UHarmonyLib.errors import InputError
from UHarmonyLib.progress import Reporter


def _median(values: list[float | None]) -> float | None:
    m = median_defined(values)
    return None if m is None else round(m, 4)


def site_table(plan: Plan, cases: list[CaseFeatures]) -> dict[str, dict[str, Any]]:
    """Per site: cases, channels, voxel sizes, label set, median SNR per channel and bias, lesions per case."""
    out = {}
    for site in plan.sites:
        mine = [c for c in cases if c.site == site.name]
        channels = [ch for ch in plan.channels if any(ch in c.channels for c in mine)]
        out[site.name] = {
            "cases": len(mine),
            "channels": channels,
            "spacing_mm": sorted({tuple(c.spacing) for c in mine}),
            "labels": list(dict.fromkeys(n for c in mine for n in c.labels)),
            "snr": {ch: _median([c.channels[ch].snr for c in mine if ch in c.channels]) for ch in channels},
            "bias": _median([c.bias for c in mine]),
            "lesions_per_case": _median([float(c.lesion_count) for c in mine]),
            "lesion_ml": _median([c.lesion_ml for c in mine]),
        }
    return out


def measure(plan: Plan, reporter: Reporter) -> list[CaseFeatures]:
    """Every case's features, reading one case at a time."""
    out = []
    for i, case in enumerate(plan.cases):
        loaded = load_case(case, len(plan.channels))
        site = plan.sites[case.site].name
        where = f"{plan.datasets[0]['path']}: case {case.entry.case}"
        out.append(case_features(case.entry.case, site, case.label_names, loaded, plan.channels, where))
        reporter.progress("diagnose", i + 1, len(plan.cases))
    return out


def diagnose_dataset(data: Path, reporter: Reporter) -> tuple[dict[str, Any], list[CaseFeatures]]:
    """The data evidence and recommendation (no model), and the case features the report plots."""
    start = time.perf_counter()
    plan = plan_training([Path(data)], val_fraction=0.0, seed=0)
    file = Path(plan.datasets[0]["path"])
    if len(plan.sites) < 2:
        raise InputError(f"{file}: diagnose compares sites, and every case is from one site ({plan.sites[0].name})")
    cases = measure(plan, reporter)
    sites = [s.name for s in plan.sites]
    pairs = appearance_pairs(cases, sites, plan.channels)
    tests = structure_tests(cases)
    table = site_table(plan, cases)
    decision = recommend(
        appearance_findings(pairs),
        structure_findings(tests, {n: s["labels"] for n, s in table.items()}),
        sample_cautions({n: s["cases"] for n, s in table.items()}),
    )
    summary = {
        "dataset": {"name": plan.datasets[0]["name"], "path": str(file), "sha256": plan.datasets[0]["sha256"]},
        "software": f"UHarmonyLib {__version__}",
        "decision": decision,
        "sites_order": sites,
        "channels": plan.channels,
        "sites": table,
        "pairs": [p.to_json() for p in pairs],
        "structure_tests": [t.to_json() for t in tests],
        "cases": [c.to_json() for c in cases],
        "data_seconds": round(time.perf_counter() - start, 3),
    }
    return summary, cases
