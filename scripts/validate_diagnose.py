"""Does `uharmony diagnose` recommend what each built-in scenario was built to need?

For each scenario (none -> neither needed, appearance -> harmonize data, structural ->
personalize the model, mixed -> both) and each seed, generate a small dataset as
`uharmony synth` does, diagnose it (data evidence only), and count the right answers.
Writes docs/results/diagnose.json: correct, total, confusion (expected -> recommended ->
count), every run, the command and the seconds. The thresholds were calibrated on seeds
0-2, so the default seeds (100-102) are fresh data.

Usage: OMP_NUM_THREADS=1 .venv/bin/python scripts/validate_diagnose.py [--seeds 100 101 102]
       [--cases-per-site 3] [--spacing 4] [--out docs/results/diagnose.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from UHarmonyLib.data.datasets import write_dataset
from UHarmonyLib.data.spec import resolve_scenario
from UHarmonyLib.diagnose import diagnose_dataset
from UHarmonyLib.diagnose.decide import RECOMMENDATIONS, THRESHOLDS
from UHarmonyLib.files.atomic import write_text_atomic
from UHarmonyLib.progress import SilentReporter

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {
    "none": "neither needed",
    "appearance": "harmonize data",
    "structural": "personalize the model",
    "mixed": "both",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    parser.add_argument("--cases-per-site", type=int, default=3)
    parser.add_argument("--spacing", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "diagnose.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    answers = list(RECOMMENDATIONS.values())
    confusion = {want: dict.fromkeys(answers, 0) for want in EXPECTED.values()}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for scenario, want in EXPECTED.items():
                folder = Path(tmp) / f"{scenario}-{seed}"
                t = time.perf_counter()
                folder.mkdir()
                write_dataset(folder, resolve_scenario(scenario), seed, args.spacing, args.cases_per_site)
                summary, _ = diagnose_dataset(folder, SilentReporter())
                got = summary["decision"]["recommendation"]
                confusion[want][got] += 1
                runs.append(
                    {
                        "scenario": scenario,
                        "seed": seed,
                        "expected": want,
                        "recommended": got,
                        "correct": got == want,
                        "appearance_findings": len(summary["decision"]["appearance_findings"]),
                        "structural_findings": summary["decision"]["structural_findings"],
                        "diagnose_seconds": summary["data_seconds"],
                        "seconds": round(time.perf_counter() - t, 2),
                    }
                )
                print(f"{scenario:<11} seed {seed}: {got:<22} {'ok' if got == want else 'WRONG'}", file=sys.stderr)
    correct = sum(r["correct"] for r in runs)
    doc = {
        "correct": correct,
        "total": len(runs),
        "goal": "at least 90 % correct (9 of 10)",
        "confusion": confusion,
        "seeds": args.seeds,
        "cases_per_site": args.cases_per_site,
        "spacing_mm": args.spacing,
        "thresholds": THRESHOLDS,
        "runs": runs,
        "torch_threads": torch.get_num_threads(),
        "command": "OMP_NUM_THREADS=1 .venv/bin/python scripts/validate_diagnose.py "
        f"--seeds {' '.join(map(str, args.seeds))} --cases-per-site {args.cases_per_site} --spacing {args.spacing:g}",
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    print(f"{correct}/{len(runs)} correct; wrote {args.out} ({doc['seconds']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
