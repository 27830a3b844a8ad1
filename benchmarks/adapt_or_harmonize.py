"""Adapt the model or the data? (issue 6): four ways to train on shifted sites, same budget, against diagnose's advice.

    .venv/bin/python benchmarks/adapt_or_harmonize.py [--quick] [--method nyul] [--seeds 0 1 2]
        [--out docs/results/adapt_or_harmonize.json] [--work DIR] [--keep] [--steps N] [--threads 1] [--device auto]

`uharmony diagnose` tells a user to harmonize the data (sites differ in appearance), personalize the model (they
differ in structure), both or neither; this checks that advice by training all four answers on the `appearance` and
`structural` scenarios: plain (instance norm), harmonized (instance norm on `--method`-harmonized data), uharmony
(U-Harmony, segmented with site `auto`: the gate decides) and both (U-Harmony on harmonized data). Every model is
trained by the library's `train` with the same steps, and scored as `uharmony evaluate` scores (whole-lesion Dice on
fresh test cases from another data seed, mean over a site's cases, then over sites, then over seeds).

The recommendation is diagnose's on the experiment's own training data (validate_diagnose.py's majority over its
seeds, from docs/results/diagnose.json, is kept beside it). The winner is the highest mean Dice, and it `matches`
the recommendation when: "harmonize data" -> harmonized, "personalize the model" -> uharmony, "both" -> both,
"neither needed" -> the four means lie within 0.02 of each other. Finished datasets and bundles in `--work` are
reused by a rerun with the same settings (more `--seeds` only add models).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from reproduce import COSTS, check_work, log, row, synthesize

from UHarmonyLib.data.spec import resolve_scenario
from UHarmonyLib.diagnose import diagnose_dataset
from UHarmonyLib.evaluation.report import evaluate_dataset, map_dataset
from UHarmonyLib.evaluation.scoring import WHOLE
from UHarmonyLib.files.atomic import check_writable, write_text_atomic
from UHarmonyLib.image_harmonization import METHODS
from UHarmonyLib.inference.device import resolve_device, resolve_precision
from UHarmonyLib.model.weights import load_bundle
from UHarmonyLib.progress import SilentReporter
from UHarmonyLib.training import TrainConfig
from UHarmonyLib.training.loop import train_run

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("appearance", "structural")
CONFIGS = {  # name: (norm, harmonized)
    "plain": ("instance", False),
    "harmonized": ("instance", True),
    "uharmony": ("uharmony", False),
    "both": ("uharmony", True),
}
EXPECTED = {"harmonize data": "harmonized", "personalize the model": "uharmony", "both": "both"}
NEITHER_WITHIN = 0.02
DATA_SEEDS = {"train": 11, "test": 12}


@dataclass(frozen=True)
class Settings:
    """Everything that decides the numbers (stored in the JSON; a reused --work folder must match it, seeds aside)."""

    spacing: float
    cases_per_site: int
    test_cases_per_site: int
    filters: tuple[int, ...]
    patch: int
    batch_size: int
    steps: int  # per model
    seeds: tuple[int, ...]


FULL = Settings(3.0, 6, 3, (8, 16, 32, 64), 48, 2, 300, (0,))
QUICK = Settings(4.0, 2, 1, (4, 8, 16), 32, 2, 3, (0,))


def fit(work: Path, name: str, data: Path, norm: str, method: str | None, s: Settings, seed: int, device: str) -> Path:
    """Train a bundle with the library's `train` (or reuse a finished one of that name)."""
    out = work / "models" / name
    if out.is_dir():
        print(f"  {name}: reusing {out}", flush=True)
    else:
        config = TrainConfig(
            data=[data],
            out=out,
            norm=norm,
            filters=s.filters,
            steps=s.steps,
            patch=(s.patch,),
            batch_size=s.batch_size,
            seed=seed,
            spacing=(s.spacing,),
            val_fraction=0.0,  # the test cases score the model; the last weights are kept
            harmonize=method,
            device=device,
            resume=True,  # continues an interrupted run's checkpoint, else starts fresh
        )
        payload = train_run(config)
        print(f"  {name}: {payload['steps']} steps in {payload['seconds']:.0f} s", flush=True)
    return out


def score(model: Path, tests: Path, device: torch.device) -> tuple[dict[str, list[float]], float | None]:
    """Whole-lesion Dice per test case by site, as `uharmony evaluate --site auto` scores it; the gate's accuracy."""
    bundle = load_bundle(model, device)
    # One pass (no test-time mirroring): the comparison is between training recipes, alike for all.
    body = evaluate_dataset(bundle, map_dataset(bundle, tests, "auto"), "auto", device, SilentReporter(), mirror=False)
    dice: dict[str, list[float]] = {}
    for case in body["cases"]:
        d = case["dice"].get(WHOLE)
        dice.setdefault(case["site"], []).extend([] if d is None else [d])
    return dice, body["gate_accuracy"] if bundle.config.norm == "uharmony" else None


def validated_recommendation(scenario: str, path: Path = ROOT / "docs" / "results" / "diagnose.json") -> str | None:
    """validate_diagnose.py's most frequent recommendation for the scenario over its seeds (None: no such file)."""
    if not path.is_file():
        return None
    votes = Counter(
        r["recommended"] for r in json.loads(path.read_text(encoding="utf-8"))["runs"] if r["scenario"] == scenario
    )
    return votes.most_common(1)[0][0] if votes else None


def verdict(rows: list[dict[str, Any]], recommendation: str) -> tuple[str, bool]:
    """The winner (highest mean Dice, first listed on a tie) and whether it is what diagnose recommended."""
    means = {r["config"]: r["dice_mean"] if r["dice_mean"] is not None else -1.0 for r in rows}
    winner = max(means, key=lambda c: means[c])
    if recommendation == "neither needed":
        return winner, max(means.values()) - min(means.values()) <= NEITHER_WITHIN
    return winner, EXPECTED.get(recommendation) == winner


def scenario_result(work: Path, scenario: str, s: Settings, method: str, device: str, started: float) -> dict[str, Any]:
    """Data, diagnosis, the four configurations over the seeds, and the verdict for one scenario."""
    spec, data = resolve_scenario(scenario), work / "data"
    for folder in (data, work / "models"):
        folder.mkdir(exist_ok=True)
    train = synthesize(data / f"{scenario}-train", spec, DATA_SEEDS["train"], s.spacing, s.cases_per_site)
    tests = synthesize(data / f"{scenario}-test", spec, DATA_SEEDS["test"], s.spacing, s.test_cases_per_site)
    recommendation = diagnose_dataset(train, SilentReporter())[0]["decision"]["recommendation"]
    log(f"{scenario}: data ready; diagnose recommends '{recommendation}'", started)
    rows = []
    for config, (norm, harmonized) in CONFIGS.items():
        chosen = method if harmonized else None
        models = [fit(work, f"{scenario}-{config}-s{k}", train, norm, chosen, s, k, device) for k in s.seeds]
        scores = [score(m, tests, resolve_device(device)) for m in models]
        r = row(config, "dynunet", s.seeds, [d for d, _ in scores], s.steps, [g for _, g in scores])
        rows.append(
            {
                "config": config,
                "norm": norm,
                "harmonize": chosen,
                **{k: v for k, v in r.items() if k not in ("method", "backbone")},
            }
        )
        log(f"{scenario} {config}: Dice {r['dice_mean']} +/- {r['dice_std']}", started)
    winner, matches = verdict(rows, recommendation)
    return {
        "rows": rows,
        "winner": winner,
        "recommendation": recommendation,
        "matches": matches,
        "recommendation_validated": validated_recommendation(scenario),
        "sites": [x.name for x in spec.sites],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a miniature of the whole experiment (about a minute)")
    parser.add_argument("--method", choices=list(METHODS), default="nyul", help="harmonization (default nyul)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "adapt_or_harmonize.json")
    parser.add_argument("--work", type=Path, default=None, help="data and models (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--steps", type=int, default=None, help="steps per model")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else FULL
    s = replace(s, steps=args.steps or s.steps, seeds=tuple(args.seeds or s.seeds))
    models = len(SCENARIOS) * len(CONFIGS) * len(s.seeds)
    cost = COSTS["quick" if args.quick else "full"]
    minutes = models * (s.steps * cost.step + cost.model + 4 * s.test_cases_per_site * cost.test_case) / 60
    log(f"plan: {models} models x {s.steps} steps; estimated {minutes:.0f} min on {args.threads} thread(s)", started)
    check_writable(args.out)
    work = args.work or Path(tempfile.mkdtemp(prefix="uharmony-adapt-"))
    check_work(work, {**json.loads(json.dumps(asdict(replace(s, seeds=())))), "method": args.method})
    try:
        scenarios = {name: scenario_result(work, name, s, args.method, args.device, started) for name in SCENARIOS}
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    device = resolve_device(args.device)
    settings = {
        **asdict(s),
        "data_seeds": DATA_SEEDS,
        "device": str(device),
        "precision": str(resolve_precision("auto", device)).replace("torch.", ""),
        "torch_threads": args.threads,
        "neither_within": NEITHER_WITHIN,
    }
    doc = {
        "scenarios": scenarios,
        "method": args.method,
        "command": "python benchmarks/adapt_or_harmonize.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.perf_counter() - started, 1),
        "settings": settings,
    }
    write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    for name, sc in scenarios.items():
        for r in sc["rows"]:
            print(f"{name:>10} {r['config']:<10} {r['dice_mean']} +/- {r['dice_std']} ({r['spread']})")
        print(f"{name:>10} winner {sc['winner']}; diagnose: {sc['recommendation']}; matches: {sc['matches']}")
    log(f"wrote {args.out}", started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
