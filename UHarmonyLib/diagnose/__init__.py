"""`uharmony diagnose`: do the sites differ in appearance (harmonize the data), in structure
(personalize the model), in both, or in neither?

features.py measures every case, compare.py contrasts sites, decide.py turns the
evidence into a recommendation with explicit thresholds, model.py adds what a trained
model shows (optional), trials.py (`--trials`) trains each strategy briefly on held-out
splits and advises from the measured Dice instead of thresholds (method_screen.py picks its
harmonization method), and report.py writes the HTML page; `summary.json` holds
everything the page shows. summaries.py writes and reads a site summary: one site's case
features, for sites that cannot pool their images (`--summarize` at each site,
`--peer-summaries` where the diagnosis runs).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from UHarmonyLib import __version__
from UHarmonyLib.data.cases import load_case
from UHarmonyLib.data.plan import Plan, plan_training
from UHarmonyLib.diagnose.compare import appearance_pairs, median_defined, structure_tests
from UHarmonyLib.diagnose.decide import (
    appearance_findings,
    from_summaries,
    recommend,
    sample_cautions,
    structure_findings,
)
from UHarmonyLib.diagnose.features import CaseFeatures, case_features
from UHarmonyLib.diagnose.summaries import PeerSummary, check_peers, summary_record
from UHarmonyLib.errors import InputError
from UHarmonyLib.progress import Reporter


def _median(values: list[float | None]) -> float | None:
    m = median_defined(values)
    return None if m is None else round(m, 4)


def site_table(sites: list[str], channels: list[str], cases: list[CaseFeatures]) -> dict[str, dict[str, Any]]:
    """Per site: cases, channels, voxel sizes, label set, median SNR per channel and bias, lesions per case."""
    out = {}
    for site in sites:
        mine = [c for c in cases if c.site == site]
        acquired = [ch for ch in channels if any(ch in c.channels for c in mine)]
        out[site] = {
            "cases": len(mine),
            "channels": acquired,
            "spacing_mm": sorted({tuple(c.spacing) for c in mine}),
            "labels": list(dict.fromkeys(n for c in mine for n in c.labels)),
            "snr": {ch: _median([c.channels[ch].snr for c in mine if ch in c.channels]) for ch in acquired},
            "bias": _median([c.bias for c in mine]),
            "lesions_per_case": _median([float(c.lesion_count) for c in mine]),
            "lesion_ml": _median([c.lesion_ml for c in mine]),
        }
    return out


def measure(plan: Plan, reporter: Reporter, site: str | None = None) -> list[CaseFeatures]:
    """Every case's features (only `site`'s, if given), reading one case at a time."""
    chosen = [c for c in plan.cases if site is None or plan.sites[c.site].name == site]
    out = []
    for i, case in enumerate(chosen):
        loaded = load_case(case, len(plan.channels))
        name = plan.sites[case.site].name
        where = f"{plan.datasets[0]['path']}: case {case.entry.case}"
        out.append(case_features(case.entry.case, name, case.label_names, loaded, plan.channels, where))
        reporter.progress("diagnose", i + 1, len(chosen))
    return out


def summarize_site(data: Path, site: str | None, reporter: Reporter) -> dict[str, Any]:
    """The summary (summaries.py) of one site of DATA: `site`, or DATA's only site."""
    plan = plan_training([Path(data)], val_fraction=0.0, seed=0)
    file, names = plan.datasets[0]["path"], [s.name for s in plan.sites]
    if site is None and len(names) > 1:
        raise InputError(f"{file}: holds sites {', '.join(names)}: name the one to summarize with --site")
    if site is not None and site not in names:
        raise InputError(f"{file}: no site named {site!r} (its sites: {', '.join(names)})")
    chosen = site or names[0]
    return summary_record(chosen, plan.channels, measure(plan, reporter, chosen))


def diagnose_dataset(
    data: Path, reporter: Reporter, peers: Sequence[PeerSummary] = ()
) -> tuple[dict[str, Any], list[CaseFeatures]]:
    """The data evidence and recommendation (no model), and the case features the report plots.

    `peers` (other sites' summaries) join DATA's sites in every screen; the decision then says
    what summaries cannot tell (decide.from_summaries).
    """
    start = time.perf_counter()
    plan = plan_training([Path(data)], val_fraction=0.0, seed=0)
    file = Path(plan.datasets[0]["path"])
    sites = [s.name for s in plan.sites]
    check_peers(peers, sites, plan.channels)
    sites += [p.site for p in peers]
    if len(sites) < 2:
        raise InputError(f"{file}: diagnose compares sites, and every case is from one site ({sites[0]})")
    cases = measure(plan, reporter) + [c for p in peers for c in p.cases]
    pairs = appearance_pairs(cases, sites, plan.channels)
    tests = structure_tests(cases)
    table = site_table(sites, plan.channels, cases)
    decision = recommend(
        appearance_findings(pairs),
        structure_findings(tests, {n: s["labels"] for n, s in table.items()}),
        sample_cautions({n: s["cases"] for n, s in table.items()}),
    )
    summary = {
        "dataset": {"name": plan.datasets[0]["name"], "path": str(file), "sha256": plan.datasets[0]["sha256"]},
        "software": f"UHarmonyLib {__version__}",
        "decision": from_summaries(decision) if peers else decision,
        "sites_order": sites,
        "channels": plan.channels,
        "sites": table,
        **({"peers": [p.to_json() for p in peers]} if peers else {}),
        "pairs": [p.to_json() for p in pairs],
        "structure_tests": [t.to_json() for t in tests],
        "cases": [c.to_json() for c in cases],
        "data_seconds": round(time.perf_counter() - start, 3),
    }
    return summary, cases
