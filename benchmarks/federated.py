"""Federated U-Harmony against federated FedAvg (InstanceNorm) and FedBN, and against centralized training.

    .venv/bin/python benchmarks/federated.py [--quick] [--final] [--out docs/results/federated.json] [--work DIR]
        [--rounds N] [--local-steps N] [--local-steps-sweep 5 25 100] [--threads 1]

The four `mixed` sites each train on their own cases in Flower's simulation runtime (the
same ServerApp and ClientApp a deployment runs); each site then scores the bundle it
wrote on fresh test cases of its own site (the gate deciding, as a hospital would run
it). The centralized row is `uharmony train` on the pooled cases with the same number
of patches: rounds x local steps x sites optimizer steps of the same batch size. It runs
first, on train's default grid (the cases' median spacing), and every federation uses
that grid. `--local-steps-sweep` trains federated U-Harmony again with other numbers of
local steps, the rounds adjusted to keep rounds x local steps (client drift against
communication); each federation's mean training loss per round is kept for a plot.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
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
from UHarmonyLib.federated.site import RECORD_NAME
from UHarmonyLib.files.atomic import check_writable, write_text_atomic
from UHarmonyLib.model.weights import load_bundle
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


# 2 mm: hospital-b's 3-6 mm deep lesions vanish on a 3 mm grid
FULL = Settings(2.0, 8, PROTOCOL.test_cases_per_site, "8,16,32,64", 48, 16, 25)
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


def loss_per_round(folder: Path, contract: Federation) -> list[float]:
    """Mean training loss over the sites in each round, from the records the sites kept."""
    records = [folder / "sites" / site / contract.digest() / RECORD_NAME for site in contract.site_names]
    rounds = [json.loads(r.read_text(encoding="utf-8"))["rounds"] for r in records]
    by_round: dict[int, list[float]] = {}
    for site_rounds in rounds:
        for r in site_rounds:
            by_round.setdefault(r["round"], []).append(r["train-loss"])
    return [round(float(np.mean(by_round[k])), 4) for k in sorted(by_round)]


def federated_row(
    method: str, s: Settings, grid: float, train: Path, tests: EvalSet, folder: Path, seed: int, started: float
) -> tuple[dict[str, Any], Scored]:
    """One federated method: the simulation, then each site's own bundle on that site's test cases."""
    sites = [x.name for x in resolve_scenario("mixed").sites]
    contract = Federation(
        sites=",".join(sites),
        method=method,
        rounds=s.rounds,
        local_steps=s.local_steps,
        patch=s.patch,
        spacing=grid,
        filters=s.filters,
        val_fraction=0.0,  # the fresh test cases score every bundle
        seed=seed,
        name=f"fed-{method}",
    )
    t = time.perf_counter()
    record = simulate(contract, [train / "dataset.json"], folder)
    seconds = time.perf_counter() - t
    scored, gate = Scored(f"federated_{method}", 0), []
    given = contract.network().config.site_required  # FedBN's local norms need the site named; it knows itself
    for site in sites:
        own = score_bundle(Path(record["bundles"][site]), tests.only(site), given, torch.device("cpu"), scored.arm)
        scored.records += own.records
        gate += [] if own.gate_accuracy is None else [own.gate_accuracy]
    per_site = site_dice(scored, sites)
    per_round = [r["seconds"] for r in record["rounds"]]
    log(f"federated {method}, {s.rounds} x {s.local_steps} steps: mean Dice {mean_site_dice(per_site)}", started)
    row = {
        "method": scored.arm,
        "site_params": contract.site_params,
        "rounds": len(per_round),
        "local_steps": s.local_steps,
        "per_site": per_site,
        "dice_mean": mean_site_dice(per_site),
        "lesion_dice_mean": lesion_dice_mean(scored),
        "gate_accuracy": round(float(np.mean(gate)), 4) if gate else None,
        "seconds": round(seconds, 1),
        "seconds_per_round": round(float(np.mean(per_round)), 2),
        "train_loss_per_round": loss_per_round(folder, contract),
    }
    return row, scored


def sweep_rows(
    sweep: list[int], s: Settings, main: dict[str, Any], run: Callable[[Settings], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Federated U-Harmony at each number of local steps, rounds x local steps kept at the main rows' budget."""
    budget = s.rounds * s.local_steps
    rows = []
    for steps in sweep:
        if steps == s.local_steps:
            rows.append(main)  # the main row is this setting
            continue
        rows.append(run(replace(s, rounds=max(1, round(budget / steps)), local_steps=steps)))
    keys = ("local_steps", "rounds", "dice_mean", "per_site", "lesion_dice_mean", "seconds", "train_loss_per_round")
    return [{k: r[k] for k in keys} for r in rows]


def central_row(
    s: Settings, train: Path, tests: EvalSet, work: Path, seed: int, started: float
) -> tuple[dict[str, Any], Scored, float]:
    """U-Harmony trained on the pooled cases with the federation's budget, scored with the gate deciding.

    Also returns its grid: train's default (the cases' median spacing), which every federation then uses.
    """
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
            patch=(s.patch,) * 3,
            val_fraction=0.0,
            seed=seed,
        )
    )
    scored = score_bundle(Path(payload["bundle"]), tests, False, torch.device("cpu"), "centralized_uharmony")
    spacing = set(load_bundle(Path(payload["bundle"])).preprocessing["spacing"])
    if len(spacing) != 1:
        raise SystemExit(f"centralized grid {sorted(spacing)} mm is not isotropic: a federation takes one spacing")
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
    return row, scored, float(spacing.pop())


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
        "Every model is trained on the centralized training's grid (settings.grid_mm: train's default, the cases' "
        "median spacing). Each site keeps its AdamW state between rounds and follows one one-cycle learning-rate "
        "schedule over all its local steps; federated U-Harmony trains residual site rows (site_params). "
        "train_loss_per_round is the sites' mean training loss in each round (no per-round Dice: a site's model "
        "exists only at the site); local_steps_sweep repeats federated U-Harmony at other numbers of local steps "
        "with rounds x local steps kept.",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a miniature run (seconds per method)")
    ap.add_argument("--out", type=Path, help="JSON figures (default docs/results/federated.json; quick: none)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/uharmony-federated-bench"), help="data and models")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--local-steps", type=int)
    ap.add_argument(
        "--local-steps-sweep",
        type=int,
        nargs="+",
        default=[],
        metavar="N",
        help="federated U-Harmony again at each N local steps, rounds x local steps kept (e.g. 5 25 100)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    ap.add_argument("--final", action="store_true", help="score on the protocol's test seeds (final runs only)")
    args = ap.parse_args()
    if args.quick and args.final:
        ap.error("--quick never uses the test seeds: drop --final")
    if any(n < 1 for n in args.local_steps_sweep):
        ap.error("--local-steps-sweep: each number of local steps must be at least 1")
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else FULL
    s = Settings(
        **{**asdict(s), **{k: v for k, v in (("rounds", args.rounds), ("local_steps", args.local_steps)) if v}}
    )
    out = args.out or (None if args.quick else ROOT / "docs" / "results" / "federated.json")
    if out is not None:
        check_writable(out)
    work = args.work / ("quick" if args.quick else "full")
    runs = (*METHODS, "central", *(f"uharmony-local{n}" for n in args.local_steps_sweep))
    if work.exists() and any((work / m).exists() for m in runs):
        raise SystemExit(f"{work}: holds an earlier run's models; delete it or choose another --work")
    started = time.perf_counter()
    mixed = resolve_scenario("mixed")
    seeds = {"train": PROTOCOL.replicate_seeds(1)[0], "test": PROTOCOL.evaluation_seeds(args.final)[0]}
    (work / "data").mkdir(parents=True, exist_ok=True)
    # Folders named by seed: a dataset of an earlier protocol or of the other evaluation is never reused.
    train = synthesize(work / "data" / f"train-{seeds['train']}", mixed, seeds["train"], s.spacing, s.cases_per_site)
    test = synthesize(work / "data" / f"test-{seeds['test']}", mixed, seeds["test"], s.spacing, s.test_cases_per_site)
    tests = load_tests(test)
    central, central_scored, grid = central_row(s, train, tests, work, seeds["train"], started)
    federated = [federated_row(m, s, grid, train, tests, work / m, seeds["train"], started) for m in METHODS]
    rows = [r for r, _ in federated]

    def uharmony_at(x: Settings) -> dict[str, Any]:
        folder = work / f"uharmony-local{x.local_steps}"
        return federated_row("uharmony", x, grid, train, tests, folder, seeds["train"], started)[0]

    sweep = sweep_rows(args.local_steps_sweep, s, rows[0], uharmony_at)
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
        "local_steps_sweep": sweep,
        "settings": {**asdict(s), "grid_mm": grid, "data_seeds": seeds},  # seeds["train"] also seeds every training
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
