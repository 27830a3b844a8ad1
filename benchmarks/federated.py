"""Federated U-Harmony against federated FedAvg (InstanceNorm) and FedBN, and against centralized training.

    .venv/bin/python benchmarks/federated.py [--quick] [--final] [--out docs/results/federated.json] [--work DIR]
        [--rounds N] [--local-steps N] [--threads 1]

The four `mixed` sites each train on their own cases in Flower's simulation runtime (the
same ServerApp and ClientApp a deployment runs); each site then scores the bundle it
wrote on fresh test cases of its own site (the gate deciding, as a hospital would run
it). The centralized row is `uharmony train` on the pooled cases with the same number
of patches: rounds x local steps x sites optimizer steps of the same batch size.
Seeds follow the locked protocol (benchmarks/protocol.py), one replicate: the training
cases and every training seed are replicate 0's, the test cases come from the protocol's
test seeds only with `--final` (development seeds otherwise). Every case is scored by
`protocol.score_bundle` and saved beside the summary; figures are whole-lesion Dice,
federated U-Harmony is compared case by case with FedAvg, FedBN and centralized training
(bootstrap 95 % CI), and seconds per round are the simulation's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from protocol import EvalSet, Scored, compare, load_protocol, load_tests, score_bundle, write_case_scores
from reproduce import synthesize

from UHarmonyLib.data.spec import resolve_scenario
from UHarmonyLib.evaluation.scoring import mean_defined
from UHarmonyLib.federated.contract import Federation
from UHarmonyLib.federated.simulate import simulate
from UHarmonyLib.files.atomic import check_writable, write_text_atomic
from UHarmonyLib.training import TrainConfig
from UHarmonyLib.training.loop import train_run

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = load_protocol()
METHODS = ("uharmony", "fedbn", "fedavg")
BASELINES = {  # each compared with federated_uharmony: what federated_uharmony - baseline measures
    "federated_fedavg": "U-Harmony's site layers over plain FedAvg (InstanceNorm)",
    "federated_fedbn": "U-Harmony (gate deciding) over FedBN's local norms (site given)",
    "centralized_uharmony": "what federating costs against training on the pooled cases",
}


@dataclass(frozen=True)
class Settings:
    spacing: float
    cases_per_site: int
    test_cases_per_site: int
    filters: str
    patch: int
    rounds: int
    local_steps: int


FULL = Settings(3.0, 8, PROTOCOL.test_cases_per_site, "8,16,32,64", 48, 8, 25)
QUICK = Settings(4.0, 2, 1, "4,8,16", 32, 2, 2)


def log(message: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:7.1f} s] {message}", flush=True)


def mean_site_dice(per_site: dict[str, float | None]) -> float | None:
    return mean_defined(list(per_site.values()))


def site_dice(scored: Scored, sites: list[str]) -> dict[str, float | None]:
    """Whole-lesion Dice per site: the mean over the site's test cases."""
    by_site = scored.by_site()
    return {site: mean_defined(by_site.get(site, [])) for site in sites}


def lesion_dice_mean(scored: Scored) -> float | None:
    """BraTS-style lesion-wise whole-lesion Dice, mean over cases."""
    return mean_defined(list(scored.by_case("lesion_dice").values()))


def federated_row(
    method: str, s: Settings, train: Path, tests: EvalSet, work: Path, seed: int, started: float
) -> tuple[dict[str, Any], Scored]:
    """One federated method: the simulation, then each site's own bundle on that site's test cases."""
    sites = [x.name for x in resolve_scenario("mixed").sites]
    contract = Federation(
        sites=",".join(sites),
        method=method,
        rounds=s.rounds,
        local_steps=s.local_steps,
        patch=s.patch,
        spacing=s.spacing,
        filters=s.filters,
        val_fraction=0.0,  # the fresh test cases score every bundle
        seed=seed,
        name=f"fed-{method}",
    )
    t = time.perf_counter()
    record = simulate(contract, [train / "dataset.json"], work / method)
    seconds = time.perf_counter() - t
    scored, gate = Scored(f"federated_{method}", 0), []
    given = contract.network().config.site_required  # FedBN's local norms need the site named; it knows itself
    for site in sites:
        own = score_bundle(Path(record["bundles"][site]), tests.only(site), given, torch.device("cpu"), scored.arm)
        scored.records += own.records
        gate += [] if own.gate_accuracy is None else [own.gate_accuracy]
    per_site = site_dice(scored, sites)
    per_round = [r["seconds"] for r in record["rounds"]]
    log(f"federated {method}: mean Dice {mean_site_dice(per_site)} in {seconds:.0f} s", started)
    row = {
        "method": scored.arm,
        "per_site": per_site,
        "dice_mean": mean_site_dice(per_site),
        "lesion_dice_mean": lesion_dice_mean(scored),
        "gate_accuracy": round(float(np.mean(gate)), 4) if gate else None,
        "seconds": round(seconds, 1),
        "seconds_per_round": round(float(np.mean(per_round)), 2),
        "rounds": len(per_round),
    }
    return row, scored


def central_row(
    s: Settings, train: Path, tests: EvalSet, work: Path, seed: int, started: float
) -> tuple[dict[str, Any], Scored]:
    """U-Harmony trained on the pooled cases with the federation's budget, scored with the gate deciding."""
    sites = [x.name for x in resolve_scenario("mixed").sites]
    steps = s.rounds * s.local_steps * len(sites)
    t = time.perf_counter()
    payload = train_run(
        TrainConfig(
            data=[train],
            out=work / "central",
            norm="uharmony",
            filters=tuple(int(f) for f in s.filters.split(",")),
            steps=steps,
            patch=(s.patch,),
            spacing=(s.spacing,),
            val_fraction=0.0,
            seed=seed,
        )
    )
    scored = score_bundle(Path(payload["bundle"]), tests, False, torch.device("cpu"), "centralized_uharmony")
    per_site = site_dice(scored, sites)
    log(f"centralized U-Harmony: mean Dice {mean_site_dice(per_site)} ({steps} steps)", started)
    row = {
        "method": scored.arm,
        "per_site": per_site,
        "dice_mean": mean_site_dice(per_site),
        "lesion_dice_mean": lesion_dice_mean(scored),
        "gate_accuracy": scored.gate_accuracy,
        "seconds": round(time.perf_counter() - t, 1),
        "steps": steps,
    }
    return row, scored


def comparisons(scored: dict[str, Scored]) -> list[dict[str, Any]]:
    """Federated U-Harmony minus each baseline, whole-lesion Dice case by case (one replicate: a case bootstrap)."""
    ours = "federated_uharmony"
    return [
        {**compare(f"{ours} - {other}", [scored[other]], [scored[ours]]), "meaning": meaning}
        for other, meaning in BASELINES.items()
    ]


def notes(final: bool) -> list[str]:
    return [
        "Seeds follow benchmarks/protocol.json with one replicate, not the protocol's "
        f"{PROTOCOL.replicates} (each is a full run of every federation): the training cases are synthesized from "
        "training_seeds[0], which also seeds every federation and the centralized training; the test cases come "
        "from the protocol's first "
        + ("test seed (a final run)." if final else "development seed (not a final run: development figures)."),
        "Per-case scores (voxel Dice per label and whole lesion, HD95, lesion-wise Dice) are in case_scores; each "
        "comparison pairs federated_uharmony with a baseline case by case (b - a), with a case bootstrap 95 % CI "
        "(one replicate); it holds when the CI's lower bound is above 0.",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a miniature run (seconds per method)")
    ap.add_argument("--out", type=Path, help="JSON figures (default docs/results/federated.json; quick: none)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/uharmony-federated-bench"), help="data and models")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--local-steps", type=int)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    ap.add_argument("--final", action="store_true", help="score on the protocol's test seeds (final runs only)")
    args = ap.parse_args()
    if args.quick and args.final:
        ap.error("--quick never uses the test seeds: drop --final")
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else FULL
    s = Settings(
        **{**asdict(s), **{k: v for k, v in (("rounds", args.rounds), ("local_steps", args.local_steps)) if v}}
    )
    out = args.out or (None if args.quick else ROOT / "docs" / "results" / "federated.json")
    if out is not None:
        check_writable(out)
    work = args.work / ("quick" if args.quick else "full")
    if work.exists() and any((work / m).exists() for m in (*METHODS, "central")):
        raise SystemExit(f"{work}: holds an earlier run's models; delete it or choose another --work")
    started = time.perf_counter()
    mixed = resolve_scenario("mixed")
    seeds = {"train": PROTOCOL.replicate_seeds(1)[0], "test": PROTOCOL.evaluation_seeds(args.final)[0]}
    (work / "data").mkdir(parents=True, exist_ok=True)
    # Folders named by seed: a dataset of an earlier protocol or of the other evaluation is never reused.
    train = synthesize(work / "data" / f"train-{seeds['train']}", mixed, seeds["train"], s.spacing, s.cases_per_site)
    test = synthesize(work / "data" / f"test-{seeds['test']}", mixed, seeds["test"], s.spacing, s.test_cases_per_site)
    tests = load_tests(test)
    federated = [federated_row(m, s, train, tests, work, seeds["train"], started) for m in METHODS]
    central, central_scored = central_row(s, train, tests, work, seeds["train"], started)
    rows = [r for r, _ in federated]
    scored = {x.arm: x for x in [*(x for _, x in federated), central_scored]}
    for row in rows:
        row["gap_to_centralized"] = (
            None
            if row["dice_mean"] is None or central["dice_mean"] is None
            else round(row["dice_mean"] - central["dice_mean"], 4)
        )
    cases = None if out is None else write_case_scores(out, PROTOCOL, args.final, list(scored.values()))
    figures = {
        "rows": [*rows, central],
        "comparisons": comparisons(scored),
        "evaluation": "test" if args.final else "development",
        "protocol": PROTOCOL.to_json(),
        "case_scores": None if cases is None else cases.name,
        "seconds_per_round": round(float(np.mean([r["seconds_per_round"] for r in rows])), 2),
        "settings": {**asdict(s), "data_seeds": seeds},  # seeds["train"] also seeds every training
        "runtime": "Flower simulation (in-process Ray), one torch thread",
        "command": " ".join(["python", "benchmarks/federated.py", *sys.argv[1:]]),
        "seconds": round(time.perf_counter() - started, 1),
        "notes": notes(args.final),
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if out is not None:
        write_text_atomic(out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
