"""Federated U-Harmony against federated FedAvg (InstanceNorm) and FedBN, and against centralized training.

    .venv/bin/python benchmarks/federated.py [--quick] [--out docs/results/federated.json] [--work DIR]
        [--rounds N] [--local-steps N] [--threads 1]

The four `mixed` sites each train on their own cases in Flower's simulation runtime (the
same ServerApp and ClientApp a deployment runs); each site then scores the bundle it
wrote on fresh test cases of its own site (the gate deciding, as a hospital would run
it). The centralized row is `uharmony train` on the pooled cases with the same number
of patches: rounds x local steps x sites optimizer steps of the same batch size.
Figures are whole-lesion Dice; seconds per round are the simulation's.
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
from reproduce import load_tests, score_bundle, synthesize

from UHarmonyLib.data.spec import resolve_scenario
from UHarmonyLib.federated.contract import Federation
from UHarmonyLib.federated.simulate import simulate
from UHarmonyLib.files.atomic import check_writable, write_text_atomic
from UHarmonyLib.training import TrainConfig
from UHarmonyLib.training.loop import train_run

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("uharmony", "fedbn", "fedavg")
SEEDS = {"train": 31, "test": 32}


@dataclass(frozen=True)
class Settings:
    spacing: float
    cases_per_site: int
    test_cases_per_site: int
    filters: str
    patch: int
    rounds: int
    local_steps: int


FULL = Settings(3.0, 8, 4, "8,16,32,64", 48, 8, 25)
QUICK = Settings(4.0, 2, 1, "4,8,16", 32, 2, 2)


def log(message: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:7.1f} s] {message}", flush=True)


def mean_site_dice(per_site: dict[str, float | None]) -> float | None:
    values = [v for v in per_site.values() if v is not None]
    return round(float(np.mean(values)), 4) if values else None


def federated_row(method: str, s: Settings, train: Path, tests: Any, work: Path, started: float) -> dict[str, Any]:
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
        name=f"fed-{method}",
    )
    t = time.perf_counter()
    record = simulate(contract, [train / "dataset.json"], work / method)
    seconds = time.perf_counter() - t
    per_site: dict[str, float | None] = {}
    gate = []
    for site in sites:
        given = contract.network().config.site_required  # FedBN's local norms need the site named; it knows itself
        dice, accuracy = score_bundle(Path(record["bundles"][site]), tests.only(site), given, torch.device("cpu"))
        per_site[site] = round(float(np.mean(dice[site])), 4) if dice.get(site) else None
        gate += [] if accuracy is None else [accuracy]
    per_round = [r["seconds"] for r in record["rounds"]]
    log(f"federated {method}: mean Dice {mean_site_dice(per_site)} in {seconds:.0f} s", started)
    return {
        "method": f"federated_{method}",
        "per_site": per_site,
        "dice_mean": mean_site_dice(per_site),
        "gate_accuracy": round(float(np.mean(gate)), 4) if gate else None,
        "seconds": round(seconds, 1),
        "seconds_per_round": round(float(np.mean(per_round)), 2),
        "rounds": len(per_round),
    }


def central_row(s: Settings, train: Path, tests: Any, work: Path, started: float) -> dict[str, Any]:
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
            seed=0,
        )
    )
    dice, accuracy = score_bundle(Path(payload["bundle"]), tests, False, torch.device("cpu"))
    per_site = {site: round(float(np.mean(dice[site])), 4) if dice.get(site) else None for site in sites}
    log(f"centralized U-Harmony: mean Dice {mean_site_dice(per_site)} ({steps} steps)", started)
    return {
        "method": "centralized_uharmony",
        "per_site": per_site,
        "dice_mean": mean_site_dice(per_site),
        "gate_accuracy": accuracy,
        "seconds": round(time.perf_counter() - t, 1),
        "steps": steps,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a miniature run (seconds per method)")
    ap.add_argument("--out", type=Path, help="JSON figures (default docs/results/federated.json; quick: none)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/uharmony-federated-bench"), help="data and models")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--local-steps", type=int)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    args = ap.parse_args()
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
    (work / "data").mkdir(parents=True, exist_ok=True)
    train = synthesize(work / "data" / "train", mixed, SEEDS["train"], s.spacing, s.cases_per_site)
    test = synthesize(work / "data" / "test", mixed, SEEDS["test"], s.spacing, s.test_cases_per_site)
    tests = load_tests(test)
    rows = [federated_row(m, s, train, tests, work, started) for m in METHODS]
    central = central_row(s, train, tests, work, started)
    for row in rows:
        row["gap_to_centralized"] = (
            None
            if row["dice_mean"] is None or central["dice_mean"] is None
            else round(row["dice_mean"] - central["dice_mean"], 4)
        )
    figures = {
        "rows": [*rows, central],
        "seconds_per_round": round(float(np.mean([r["seconds_per_round"] for r in rows])), 2),
        "settings": asdict(s),
        "runtime": "Flower simulation (in-process Ray), one torch thread",
        "command": " ".join(["python", "benchmarks/federated.py", *sys.argv[1:]]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if out is not None:
        write_text_atomic(out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
