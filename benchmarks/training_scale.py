"""Training at scale: peak memory and steps per second against the number of cases and of DataLoader workers,
every case in memory (`--data-mode memory`) against cases streamed from disk (`--data-mode stream`).

    .venv/bin/python benchmarks/training_scale.py [--quick] [--cases 16 64 256] [--workers 0 1 2] [--steps 30]
        [--cache-cases 8] [--out docs/results/training_scale.json] [--work DIR]

One synthetic `mixed` dataset (4 sites, absent channels, 2 mm) of the largest size is written
once (kept in `--work` for the next run); each size lists the first cases of every site. Every
row is one `train` run, in its own process, of the same network, steps and seed (they train
the same batches: only where the cases live and who cuts the patches differ), without
validation. `peak_rss_mb` is the training process's own peak resident memory (getrusage,
exact); `worker_peak_rss_mb` the largest of its child processes' (DataLoader workers, which
share the cached cases with it, so the two are not added). `steps_per_second` counts the
second half of the steps (the first holds the workers' start and first reads), the wait for
each batch included. `rss_growth_16_to_256` is the growth of the streamed run's peak (no
workers) from 16 to 256 cases, goal < 0.2; `speed_vs_memory` is each streamed row's
steps_per_second over today's path's (in memory, no workers) at the same size, goal >= 0.9.
`--quick` (4 and 8 cases at 4 mm, a tiny network, 4 steps): a smoke check.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from UHarmonyLib.cli import main as uharmony
from UHarmonyLib.files.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "results" / "training_scale.json"
SITES = 4  # the `mixed` scenario's
FULL = {"cases": [16, 64, 256], "workers": [0, 1, 2], "steps": 30, "spacing": 2.0, "patch": 64,
        "filters": [16, 32, 64, 128]}  # fmt: skip
QUICK = {"cases": [4, 8], "workers": [0, 1], "steps": 4, "spacing": 4.0, "patch": 32, "filters": [4, 8, 16]}
CHILD = """
import json, resource, sys, time
from pathlib import Path
from UHarmonyLib.progress import SilentReporter
from UHarmonyLib.training import TrainConfig, train_run

class StepClock(SilentReporter):
    def __init__(self):
        self.times = []
    def progress(self, stage, done, total):
        if stage == "train":
            self.times.append(time.perf_counter())

settings = json.loads(sys.argv[1])
clock = StepClock()
payload = train_run(TrainConfig(**settings), clock)
half = len(clock.times) // 2
print(json.dumps({
    "steps_per_second": (len(clock.times) - 1 - half) / (clock.times[-1] - clock.times[half]),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    "seconds": payload["seconds"],
}))
"""


def dataset(work: Path, largest: int, spacing: float) -> Path:
    """The `mixed` dataset with `largest` cases (written once, then reused)."""
    folder = work / f"mixed-{largest}-{spacing:g}mm"
    if not (folder / "dataset.json").is_file():
        per_site = -(-largest // SITES)
        args = ["synth", "--scenario", "mixed", "--out", str(folder), "--spacing", f"{spacing:g}"]
        if uharmony([*args, "--cases-per-site", str(per_site), "--overwrite"]) != 0:
            raise SystemExit("synth failed")
    return folder


def listing(data: Path, cases: int, work: Path) -> Path:
    """A dataset.json listing the first cases/4 cases of each site of `data` (by absolute path)."""
    raw = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    per_site = cases // SITES
    kept = [e for s in raw["sites"] for e in [e for e in raw["training"] if e["site"] == s["name"]][:per_site]]
    entries = [{**e, "image": [str(data / p) for p in e["image"]], "label": str(data / e["label"])} for e in kept]
    folder = work / f"list-{cases}"
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "dataset.json", json.dumps({**raw, "training": entries, "numTraining": len(entries)}))
    return folder


def measure(settings: dict[str, Any]) -> dict[str, float]:
    """One training run in its own process: steps per second, peak memory (MB), seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings)], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"training failed: {run.stderr.strip().splitlines()[-1:]}")
    result: dict[str, float] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def growth(rows: list[dict[str, Any]], mode: str, first: int, last: int) -> float | None:
    """Peak RSS growth of the `mode` rows without workers from `first` to `last` cases."""
    peak = {r["cases"]: r["peak_rss_mb"] for r in rows if r["mode"] == mode and r["workers"] == 0}
    return round(peak[last] / peak[first] - 1, 3) if first in peak and last in peak else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 and 8 cases at 4 mm, a tiny network: a smoke check")
    parser.add_argument("--cases", type=int, nargs="+", help="dataset sizes, multiples of 4 (16 64 256)")
    parser.add_argument("--workers", type=int, nargs="+", help="DataLoader workers (0 1 2)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (30)")
    parser.add_argument("--cache-cases", type=int, default=8, help="stream: cases kept in memory (8)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    parser.add_argument("--work", type=Path, help="keeps the synthetic dataset for the next run (default: temporary)")
    args = parser.parse_args(argv)
    plan = dict(QUICK if args.quick else FULL)
    plan.update({k: v for k, v in (("cases", args.cases), ("workers", args.workers), ("steps", args.steps)) if v})
    if any(c % SITES or c < SITES for c in plan["cases"]):
        raise SystemExit(f"--cases: multiples of {SITES} (one share per site)")
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="uharmony-training-scale-") as tmp:
        work = args.work or Path(tmp)
        data = dataset(work, max(plan["cases"]), plan["spacing"])
        for cases in sorted(plan["cases"]):
            listed = listing(data, cases, Path(tmp))
            for mode in ("memory", "stream"):
                for workers in plan["workers"]:
                    settings = {
                        "data": [str(listed)], "out": str(Path(tmp) / f"model-{cases}-{mode}-{workers}"),
                        "steps": plan["steps"], "spacing": [plan["spacing"]], "patch": [plan["patch"]],
                        "filters": plan["filters"], "val_fraction": 0.0, "data_mode": mode, "workers": workers,
                        "cache_cases": args.cache_cases, "device": "cpu",
                    }  # fmt: skip
                    result = measure(settings)
                    rounded = {k: round(v, 3 if k == "steps_per_second" else 1) for k, v in result.items()}
                    rows.append({"cases": cases, "mode": mode, "workers": workers, **rounded})
                    print(f"{cases:4d} cases {mode:6s} {workers} workers: {result['steps_per_second']:6.3f} steps/s, "
                          f"peak {result['peak_rss_mb']:7.0f} MB (workers {result['worker_peak_rss_mb']:5.0f} MB), "
                          f"{result['seconds']:6.1f} s")  # fmt: skip
    today = {r["cases"]: r["steps_per_second"] for r in rows if r["mode"] == "memory" and r["workers"] == 0}
    sizes = sorted(plan["cases"])
    doc = {
        "rows": rows,
        "rss_growth_16_to_256": growth(rows, "stream", 16, 256),
        "rss_growth": {mode: growth(rows, mode, sizes[0], sizes[-1]) for mode in ("memory", "stream")},
        "speed_vs_memory": [
            {"cases": r["cases"], "workers": r["workers"], "ratio": round(r["steps_per_second"] / today[r["cases"]], 3)}
            for r in rows
            if r["mode"] == "stream" and r["cases"] in today
        ],
        "settings": {**plan, "cache_cases": args.cache_cases, "batch": 2, "scenario": "mixed", "sites": SITES},
        "definitions": {
            "peak_rss_mb": "the training process's peak resident memory (getrusage ru_maxrss)",
            "worker_peak_rss_mb": "the largest peak of its child processes (DataLoader workers; shared pages counted)",
            "steps_per_second": "steps of the second half of the run / their wall seconds, batch waits included",
            "rss_growth": "peak_rss_mb without workers at the largest size / at the smallest - 1",
            "rss_growth_16_to_256": "rss_growth of the streamed runs from 16 to 256 cases (goal < 0.2)",
            "speed_vs_memory": "steps_per_second streamed / in memory without workers, same size (goal >= 0.9)",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "command": " ".join(["training_scale.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": dt.date.today().isoformat(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
