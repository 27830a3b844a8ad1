"""Adapt the model or the data? (issue 6): four ways to train on shifted sites, same budget, against diagnose's advice.

    .venv/bin/python benchmarks/adapt_or_harmonize.py [--quick] [--method nyul] [--replicates N] [--final]
        [--out docs/results/adapt_or_harmonize.json] [--work DIR] [--keep] [--steps N] [--threads 1] [--device auto]

`uharmony diagnose` tells a user to harmonize the data (sites differ in appearance), personalize the model (they
differ in structure), both or neither; this checks that advice by training all four answers on the `appearance` and
`structural` scenarios: plain (instance norm), harmonized (instance norm on `--method`-harmonized data), uharmony
(U-Harmony, segmented with site `auto`: the gate decides) and both (U-Harmony on harmonized data). Every model is
trained by the library's `train` with the same steps and scored by `protocol.score_bundle` (site `auto`, one pass).
Seeds follow the locked protocol (benchmarks/protocol.py): replicate r of every configuration trains on its own
draw of training cases with training seed `training_seeds[r]`; scenario k's test cases come from the protocol's
k-th test seed only with `--final`, from its development seeds otherwise. The table's figure is whole-lesion Dice
(mean over a site's cases, then over sites, then over replicates); every case's scores are saved beside the
summary, and each of harmonized, uharmony and both is compared with plain case by case (hierarchical bootstrap CI).

The recommendation is diagnose's on the experiment's own training data, replicate 0's (validate_diagnose.py's
majority over its seeds, from docs/results/diagnose.json, is kept beside it). The winner is the highest mean Dice,
and it `matches` the recommendation when: "harmonize data" -> harmonized, "personalize the model" -> uharmony,
"both" -> both, "neither needed" -> the four means lie within 0.02 of each other. Finished datasets and bundles
in `--work` are reused by a rerun with the same settings; they are named by their seeds, so more `--replicates`
only add models and a `--final` run reuses the development run's models.
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
from protocol import Scored, compare, load_protocol, load_tests, score_bundle, write_case_scores
from reproduce import COSTS, check_work, log, row, synthesize

from UHarmonyLib.data.spec import resolve_scenario
from UHarmonyLib.diagnose import diagnose_dataset
from UHarmonyLib.diagnose.trials import STRATEGIES
from UHarmonyLib.files.atomic import check_writable, write_text_atomic
from UHarmonyLib.image_harmonization import METHODS
from UHarmonyLib.inference.device import resolve_device, resolve_precision
from UHarmonyLib.progress import SilentReporter
from UHarmonyLib.training import TrainConfig
from UHarmonyLib.training.loop import train_run

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = load_protocol()
SCENARIOS = ("appearance", "structural")
CONFIGS = STRATEGIES  # name: (norm, harmonized), the strategies `diagnose --trials` compares
EXPECTED = {"harmonize data": "harmonized", "personalize the model": "uharmony", "both": "both"}
NEITHER_WITHIN = 0.02


@dataclass(frozen=True)
class Settings:
    """Everything that decides the numbers (stored in the JSON; a reused --work folder must match it, replicates
    aside)."""

    spacing: float
    cases_per_site: int
    test_cases_per_site: int
    filters: tuple[int, ...]
    patch: int
    batch_size: int
    steps: int  # per model
    replicates: int  # per configuration; replicate r: training_seeds[r] for its data and its training


# One replicate by default, not the protocol's six, which would make the documented half-hour run three hours.
FULL = Settings(3.0, 6, PROTOCOL.test_cases_per_site, (8, 16, 32, 64), 48, 2, 300, 1)
QUICK = Settings(4.0, 2, 1, (4, 8, 16), 32, 2, 3, 1)


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


def data_seeds(s: Settings, final: bool) -> dict[str, Any]:
    """Synth seeds: replicate r's training data (every scenario), and scenario k's test cases."""
    evaluation = PROTOCOL.evaluation_seeds(final)
    return {
        "train": list(PROTOCOL.replicate_seeds(s.replicates)),
        "test": {name: evaluation[k] for k, name in enumerate(SCENARIOS)},
    }


def validated_recommendation(scenario: str, path: Path = ROOT / "docs" / "results" / "diagnose.json") -> str | None:
    """The screens' most frequent recommendation for the scenario in a screens-only validation file (None: no file
    or no screen runs in it; scripts/validate_diagnose.py now validates the outcome trials by regret instead)."""
    if not path.is_file():
        return None
    votes = Counter(
        r["recommended"]
        for r in json.loads(path.read_text(encoding="utf-8")).get("runs", [])
        if r["scenario"] == scenario
    )
    return votes.most_common(1)[0][0] if votes else None


def verdict(rows: list[dict[str, Any]], recommendation: str) -> tuple[str, bool]:
    """The winner (highest mean Dice, first listed on a tie) and whether it is what diagnose recommended."""
    means = {r["config"]: r["dice_mean"] if r["dice_mean"] is not None else -1.0 for r in rows}
    winner = max(means, key=lambda c: means[c])
    if recommendation == "neither needed":
        return winner, max(means.values()) - min(means.values()) <= NEITHER_WITHIN
    return winner, EXPECTED.get(recommendation) == winner


def scenario_result(
    work: Path, scenario: str, s: Settings, method: str, device: str, final: bool, started: float
) -> tuple[dict[str, Any], dict[str, list[Scored]]]:
    """Data, diagnosis, the four configurations over the replicates, and the verdict for one scenario; with every
    configuration's scores per replicate (arm `SCENARIO/CONFIG`)."""
    spec, data = resolve_scenario(scenario), work / "data"
    for folder in (data, work / "models"):
        folder.mkdir(exist_ok=True)
    seeds = data_seeds(s, final)
    trains = [synthesize(data / f"{scenario}-train-{k}", spec, k, s.spacing, s.cases_per_site) for k in seeds["train"]]
    test_seed = seeds["test"][scenario]
    tests = load_tests(
        synthesize(data / f"{scenario}-test-{test_seed}", spec, test_seed, s.spacing, s.test_cases_per_site)
    )
    recommendation = diagnose_dataset(trains[0], SilentReporter())[0]["decision"]["recommendation"]
    log(f"{scenario}: data ready; diagnose recommends '{recommendation}'", started)
    rows: list[dict[str, Any]] = []
    scored: dict[str, list[Scored]] = {}
    for config, (norm, harmonized) in CONFIGS.items():
        chosen = method if harmonized else None
        models = [
            fit(work, f"{scenario}-{config}-t{k}", train, norm, chosen, s, k, device)
            for k, train in zip(seeds["train"], trains)
        ]
        arm = f"{scenario}/{config}"
        # One pass (no test-time mirroring): the comparison is between training recipes, alike for all.
        scored[config] = [score_bundle(m, tests, False, resolve_device(device), arm, r) for r, m in enumerate(models)]
        r = {**row(config, scenario, scored[config], s.steps), "seeds": list(seeds["train"])}
        rows.append(
            {
                "config": config,
                "norm": norm,
                "harmonize": chosen,
                **{k: v for k, v in r.items() if k not in ("method", "backbone", "scenario")},
            }
        )
        log(f"{scenario} {config}: Dice {r['dice_mean']} +/- {r['dice_std']}", started)
    winner, matches = verdict(rows, recommendation)
    result = {
        "rows": rows,
        "winner": winner,
        "recommendation": recommendation,
        "matches": matches,
        "recommendation_validated": validated_recommendation(scenario),
        "sites": [x.name for x in spec.sites],
    }
    return result, scored


MEANINGS = {  # what config - plain measures: the gain of diagnose's matching answer
    "harmonized": "harmonizing the data (diagnose: 'harmonize data')",
    "uharmony": "personalizing the model, gate deciding (diagnose: 'personalize the model')",
    "both": "both at once (diagnose: 'both')",
}


def comparisons(scored: dict[str, dict[str, list[Scored]]]) -> list[dict[str, Any]]:
    """Every configuration against plain in each scenario: whole-lesion Dice, config - plain, case by case."""
    return [
        {**compare(f"{scenario}: {config} - plain", arms["plain"], arms[config]), "meaning": meaning}
        for scenario, arms in scored.items()
        for config, meaning in MEANINGS.items()
    ]


def notes(s: Settings, final: bool) -> list[str]:
    out = [
        "Seeds follow benchmarks/protocol.json: replicate r of every configuration trains on its own draw of "
        "training cases (synth seed training_seeds[r]) with training seed training_seeds[r]; scenario k's test "
        "cases come from the protocol's k-th "
        + ("test seed (a final run)." if final else "development seed (not a final run: development figures).")
    ]
    if s.replicates < PROTOCOL.replicates:
        out.append(
            f"{s.replicates} replicate(s) per configuration (--replicates), fewer than the protocol's "
            f"{PROTOCOL.replicates}, which would make the documented run {PROTOCOL.replicates} times longer; a "
            "comparison's interval covers training-seed chance only through the replicates run."
        )
    out.append(
        "Per-case scores (voxel Dice per label and whole lesion, HD95, lesion-wise Dice) are in case_scores; "
        "comparisons pair a configuration with plain case by case within each replicate (b - a) and give the "
        "hierarchical bootstrap 95 % CI; a comparison holds when the CI's lower bound is above 0."
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a miniature of the whole experiment (about a minute)")
    parser.add_argument("--method", choices=list(METHODS), default="nyul", help="harmonization (default nyul)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "adapt_or_harmonize.json")
    parser.add_argument("--work", type=Path, default=None, help="data and models (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--steps", type=int, default=None, help="steps per model")
    parser.add_argument("--replicates", type=int, default=None, help="replicates per configuration (default 1)")
    parser.add_argument("--final", action="store_true", help="score on the protocol's test seeds (final runs only)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()
    if args.quick and args.final:
        parser.error("--quick never uses the test seeds: drop --final")
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else FULL
    s = replace(s, steps=args.steps or s.steps, replicates=args.replicates or s.replicates)
    PROTOCOL.replicate_seeds(s.replicates)  # refuses more replicates than the protocol has training seeds
    models = len(SCENARIOS) * len(CONFIGS) * s.replicates
    cost = COSTS["quick" if args.quick else "full"]
    minutes = models * (s.steps * cost.step + cost.model + 4 * s.test_cases_per_site * cost.test_case) / 60
    log(f"plan: {models} models x {s.steps} steps; estimated {minutes:.0f} min on {args.threads} thread(s)", started)
    check_writable(args.out)
    work = args.work or Path(tempfile.mkdtemp(prefix="uharmony-adapt-"))
    check_work(work, {**json.loads(json.dumps(asdict(replace(s, replicates=0)))), "method": args.method})
    try:
        results = {n: scenario_result(work, n, s, args.method, args.device, args.final, started) for n in SCENARIOS}
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    scenarios = {name: result for name, (result, _) in results.items()}
    scored = {name: arms for name, (_, arms) in results.items()}
    cases = write_case_scores(
        args.out, PROTOCOL, args.final, [x for arms in scored.values() for runs in arms.values() for x in runs]
    )
    device = resolve_device(args.device)
    settings = {
        **asdict(s),
        "data_seeds": data_seeds(s, args.final),
        "device": str(device),
        "precision": str(resolve_precision("auto", device)).replace("torch.", ""),
        "torch_threads": args.threads,
        "neither_within": NEITHER_WITHIN,
    }
    doc = {
        "scenarios": scenarios,
        "comparisons": comparisons(scored),
        "evaluation": "test" if args.final else "development",
        "protocol": PROTOCOL.to_json(),
        "case_scores": cases.name,
        "method": args.method,
        "command": "python benchmarks/adapt_or_harmonize.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.perf_counter() - started, 1),
        "settings": settings,
        "notes": notes(s, args.final),
    }
    write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    for name, sc in scenarios.items():
        for r in sc["rows"]:
            print(f"{name:>10} {r['config']:<10} {r['dice_mean']} +/- {r['dice_std']} ({r['spread']})")
        print(f"{name:>10} winner {sc['winner']}; diagnose: {sc['recommendation']}; matches: {sc['matches']}")
    for c in doc["comparisons"]:
        verdict_text = "holds" if c["holds"] else "does not hold"
        print(
            f"{c['name']}: {c['diff_mean']:+.4f}, 95 % CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] ({verdict_text})"
        )
    log(f"wrote {args.out}", started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
