"""Test-time mirroring: whole-lesion Dice against seconds per case for 1, 2, 4 and 8 passes (inference.py's "passes").

Development cases of the model's training sites (the `clinics` scenario the bundled default model was trained on,
the locked protocol's first development seed, never a test seed) go through `segment_volumes` as users run it (gate
deciding) once per pass count, the counts in a rotating order so that drift on a shared machine hits them alike.
Each count's Dice is paired case by case with every other's (hierarchical bootstrap 95 % CI, as every accuracy
benchmark here), and the engine's default is the fewest passes that no count with more passes beats by more than
`MARGIN` with confidence: more passes cost proportionally more time, so they must buy a shown gain.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from default_model import held_out_cases
from protocol import Scored, case_record, compare, load_protocol

from UHarmonyLib.data.spec import resolve_scenario
from UHarmonyLib.evaluation.scoring import WHOLE, mean_defined
from UHarmonyLib.inference.engine import segment_volumes
from UHarmonyLib.model.card import MIRROR_PASSES
from UHarmonyLib.model.weights import load_bundle

PASSES = (1, 2, 4, 8)
CASES_PER_SITE = 5  # 20 cases of 15 passes: about 12 min on 2 quiet cores
SCENARIO = "clinics"
MARGIN = 0.005  # whole-lesion Dice a count with more passes must gain, its 95 % CI above it, to be worth its time
RULE = (
    f"the fewest passes that no count with more passes beats by more than {MARGIN} whole-lesion Dice with "
    "confidence (paired 95 % CI lower bound above the margin)"
)


def choose(comparisons: list[dict[str, Any]]) -> int:
    """The default by `RULE`, from the paired comparisons of every pair of counts (a fewer, b more passes)."""
    beaten = {c["a_passes"] for c in comparisons if c["ci95"][0] > MARGIN}
    return min(p for p in PASSES if p not in beaten)


def measure(model: Path, cases_per_site: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Rows of Dice and seconds per case for each pass count, their paired comparisons and the choice."""
    bundle = load_bundle(model)
    protocol = load_protocol()
    scenario = resolve_scenario(SCENARIO)
    sites = [replace(s, cases=None) for s in scenario.sites if s.name in bundle.site_names]
    seed = protocol.development_seeds[0]
    spacing = float(bundle.preprocessing["spacing"][0])
    tests = held_out_cases(bundle, sites, scenario.channel_naming, cases_per_site, spacing, seed)
    scored = {p: Scored(f"{p} passes", 0) for p in PASSES}
    seconds: dict[int, list[float]] = {p: [] for p in PASSES}
    for i, case in enumerate(tests.cases):
        for p in PASSES[i % len(PASSES) :] + PASSES[: i % len(PASSES)]:
            start = time.perf_counter()
            result = segment_volumes(bundle, case.images, passes=p)
            seconds[p].append(time.perf_counter() - start)
            scored[p].records.append(case_record(scored[p].arm, 0, case, result, given=False))
        log(
            f"passes: case {i + 1}/{len(tests.cases)} ({case.site}): "
            + ", ".join(f"{p}: Dice {scored[p].records[-1]['dice'][WHOLE]} in {seconds[p][-1]:.1f} s" for p in PASSES)
        )
    rows = [
        {
            "passes": p,
            "dice": mean_defined([r["dice"][WHOLE] for r in scored[p].records]),
            "seconds": round(sum(seconds[p]) / len(seconds[p]), 3),
            "cases": len(tests.cases),
        }
        for p in PASSES
    ]
    comparisons = [
        {**compare(f"{b} vs {a} passes", [scored[a]], [scored[b]]), "a_passes": a, "b_passes": b}
        for i, a in enumerate(PASSES)
        for b in PASSES[i + 1 :]
    ]
    return {
        "rows": rows,
        "comparisons": comparisons,
        "choice": {"rule": RULE, "margin": MARGIN, "chosen": choose(comparisons), "engine_default": MIRROR_PASSES},
        "model": bundle.label_text,
        "sites": [s.name for s in sites],
        "scenario": SCENARIO,
        "cases_per_site": cases_per_site,
        "evaluation": "development",
        "seed": seed,
        "dice": f"mean {WHOLE} Dice over cases (gate deciding), each case scored by the project's rule",
        "seconds": "mean wall seconds of one segment_volumes call per case (preprocessing to labels, in process)",
    }
