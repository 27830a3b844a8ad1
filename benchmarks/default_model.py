"""Figures of a trained model on fresh cases: seen sites, two unseen protocols, the gate, the flag and the demo.

    .venv/bin/python benchmarks/default_model.py --train-data DATASET_JSON [--model BUNDLE]
        [--cases-per-site 10] [--final] [--calibrate] [--spacing MM] [--out docs/results/default_model.json]

Held-out cases are generated from the training sites' own specs (read from the training
dataset.json, which stores them resolved, channel names included) and from two MR
protocols the model never saw, with the locked protocol's seed (benchmarks/protocol.py):
its first test seed only with `--final`, its first development seed otherwise; the model
is trained elsewhere, so no training seed enters. Each case goes through the real engine
with the gate driving and the engine's default passes (one since test-time mirroring
stopped being the default; `passes` in the JSON says which), as users run it, and is
scored by the project's rule: Dice and HD95 per label the site annotates and the whole
lesion, and lesion-wise Dice. Absent channels are given to the model as all-zero volumes,
as in training. Every case's record is saved beside the summary.

The unfamiliar-case threshold is set on development cases of the known sites (the
protocol's last development seed, which no evaluation set uses) at a declared 5 %
false-positive rate; `--calibrate` writes it into the model's card (the training-time
threshold, from leave-one-case-out training distances, sits too close to the bank).
The gate is judged by accuracy and expected calibration error on the seen sites, the flag
by AUROC of each unseen protocol's cases against the seen ones and by risk-coverage.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gate_figures import accuracy, expected_calibration_error, flag_figures, threshold_at
from protocol import EvalCase, EvalSet, Scored, case_record, load_protocol, load_tests, write_case_scores
from reproduce import NEW_SITE_SPEC, synthesize

from UHarmonyLib.data.scenarios import PHYSICS_DEFAULTS
from UHarmonyLib.data.spec import SynthSpec, parse_spec, resolve_scenario
from UHarmonyLib.data.synth import SiteSpec
from UHarmonyLib.evaluation.scoring import WHOLE, mean_defined
from UHarmonyLib.files.atomic import write_text_atomic
from UHarmonyLib.inference.engine import segment_volumes
from UHarmonyLib.model.card import MIRROR_PASSES, set_familiar_distance
from UHarmonyLib.model.weights import Bundle, load_bundle
from UHarmonyLib.resources import default_model

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = load_protocol()
FALSE_POSITIVE_RATE = 0.05  # declared: the share of known-site development cases the flag may raise
CALIBRATION_CASES_PER_SITE = 5
UNSEEN_SPEC: dict[str, Any] = {  # protocols no built-in training scenario uses
    "defaults": PHYSICS_DEFAULTS,
    "sites": [
        {**NEW_SITE_SPEC["sites"][0], "name": "unseen-1.5t-spgr"},  # reproduce.py's add-site hospital
        {  # 3 T, spin-echo T1, long-TI FLAIR, short-echo T2, 4 mm slices, ringing, low gain
            "name": "unseen-3t-se",
            "physics": {"field_strength": 3.0, "kspace": [0.75, 0.75, 1.0]},
            "channels": {
                "FLAIR": {"TR": 9000, "TE": 125, "TI": 2500},
                "T1w": {"sequence": "se", "TR": 600, "TE": 10},
                "t1gd": {"sequence": "se", "TR": 600, "TE": 10},
                "T2w": {"TR": 5000, "TE": 70},
            },
            "spacing": [2.0, 2.0, 4.0],
            "noise": 0.03,
            "bias": 0.2,
            "scale": 150.0,
        },
    ],
}


def held_out_cases(
    bundle: Bundle, sites: list[SiteSpec], naming: str, count: int, spacing: float, seed: int
) -> EvalSet:
    """`count` fresh cases of every site, written as `uharmony synth` writes them and read as training reads them."""
    spec = SynthSpec("default_model", "held-out", "Held-out cases of trained and unseen sites.", sites, naming)
    with tempfile.TemporaryDirectory(prefix="uharmony-default-model-") as tmp:
        tests = load_tests(synthesize(Path(tmp) / "tests", spec, seed, spacing, count))
    if tests.channels != bundle.channel_names or tests.labels != [lab["name"] for lab in bundle.labels]:
        raise SystemExit(f"{bundle.path}: channels or labels differ from the held-out cases' ({tests.channels})")
    return tests


def gated_record(bundle: Bundle, case: EvalCase) -> dict[str, Any]:
    """One case through the engine as users run it (gate deciding, the default passes): its protocol record."""
    return case_record(bundle.path.name, 0, case, segment_volumes(bundle, case.images), given=False)


def calibrate(args: argparse.Namespace, bundle: Bundle, seen: list[SiteSpec], naming: str) -> dict[str, Any]:
    """The flag's threshold from development cases of the known sites; written into the card with --calibrate."""
    seed = PROTOCOL.development_seeds[-1]
    cases = held_out_cases(bundle, seen, naming, CALIBRATION_CASES_PER_SITE, args.spacing, seed).cases
    # only the gate's distance is needed: no mirrored passes, no scoring
    distances = [segment_volumes(bundle, case.images, passes=1).gate.distance for case in cases]
    threshold = threshold_at(distances, FALSE_POSITIVE_RATE)
    how = {
        "false_positive_rate": FALSE_POSITIVE_RATE,
        "cases": len(distances),
        "data": f"development cases of the known sites (seed {seed})",
        "command": "python benchmarks/default_model.py " + " ".join(sys.argv[1:]),
    }
    if args.calibrate:
        set_familiar_distance(args.model, threshold, how)
    return {**how, "threshold": round(threshold, 4), "written_to_card": bool(args.calibrate)}


def demo_seconds() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "UHarmonyLib", "demo", "--out", tmp], check=True, capture_output=True)
        return round(time.perf_counter() - start, 2)


def mean(values: list[float]) -> float:
    return round(float(np.mean(values)), 4) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-data", required=True, help="the training dataset.json (or scenario/spec)")
    parser.add_argument("--model", type=Path, default=default_model())
    parser.add_argument("--cases-per-site", type=int, default=PROTOCOL.test_cases_per_site)
    parser.add_argument("--final", action="store_true", help="generate from the protocol's test seed (final runs)")
    parser.add_argument("--calibrate", action="store_true", help="write the flag's threshold into the model's card")
    parser.add_argument("--spacing", type=float, default=None, help="generation spacing (default: the model's)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "default_model.json")
    parser.add_argument("--skip-demo", action="store_true", help="do not time the demo (demo_seconds: null)")
    args = parser.parse_args()
    start = time.perf_counter()
    bundle = load_bundle(args.model)
    args.spacing = args.spacing or float(bundle.preprocessing["spacing"][0])
    trained = resolve_scenario(args.train_data)
    # cases=None: every site gets --cases-per-site, whatever count its training spec gave it
    seen = [replace(s, cases=None) for s in trained.sites if s.name in bundle.site_names]
    if not seen:
        raise SystemExit(f"{args.train_data}: none of its sites is a site of {args.model}")
    calibration = calibrate(args, bundle, seen, trained.channel_naming)
    bundle = load_bundle(args.model)  # again: --calibrate has rewritten its card
    unseen = parse_spec(UNSEEN_SPEC, "benchmarks/default_model.py's unseen sites").sites
    seed = PROTOCOL.evaluation_seeds(args.final)[0]
    tests = held_out_cases(bundle, [*seen, *unseen], trained.channel_naming, args.cases_per_site, args.spacing, seed)
    scored = Scored(bundle.path.name, 0)
    for site in [s.name for s in [*seen, *unseen]]:
        scored.records += [gated_record(bundle, case) for case in tests.only(site).cases]
        print(f"{site}: whole-lesion Dice {mean_defined(scored.by_site()[site])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cases = write_case_scores(args.out, PROTOCOL, args.final, [scored])
    rows = scored.records
    seen_names = {s.name for s in seen}
    seen_rows = [r for r in rows if r["site"] in seen_names]
    unseen_rows = [r for r in rows if r["site"] not in seen_names]

    def per_site(subset: list[dict[str, Any]]) -> dict[str, float | None]:
        return {
            s: mean_defined([r["dice"][WHOLE] for r in subset if r["site"] == s])
            for s in dict.fromkeys(r["site"] for r in subset)
        }

    labels = [lab["name"] for lab in bundle.labels] + [WHOLE]
    figures = {
        "model": f"{bundle.label_text} ({args.model})",
        "channels": bundle.channel_names,
        "dice_whole_lesion_seen": per_site(seen_rows),
        "dice_whole_lesion_unseen": per_site(unseen_rows),
        "dice_per_label": {
            s: {
                lab: mean_defined([r["dice"][lab] for r in rows if r["site"] == s and lab in r["dice"]])
                for lab in labels
            }
            for s in dict.fromkeys(r["site"] for r in rows)
        },
        "lesion_dice_whole_lesion": {
            s: mean_defined([r["lesion_dice"][WHOLE] for r in rows if r["site"] == s])
            for s in dict.fromkeys(r["site"] for r in rows)
        },
        "gate": {
            "accuracy": accuracy(seen_rows),
            "ece": expected_calibration_error(seen_rows),
            "cases": len(seen_rows),
        },
        "unfamiliar": [
            {
                "site": site,
                **flag_figures(seen_rows, [r for r in unseen_rows if r["site"] == site], calibration["threshold"]),
            }
            for site in dict.fromkeys(r["site"] for r in unseen_rows)
        ],
        "unfamiliar_threshold": calibration,
        "entropy_seen_mean": mean([r["entropy"] for r in seen_rows]),
        "entropy_unseen_mean": mean([r["entropy"] for r in unseen_rows]),
        "unfamiliar_flagged_unseen": mean([float(not r["familiar"]) for r in unseen_rows]),
        "unfamiliar_flagged_seen": mean([float(not r["familiar"]) for r in seen_rows]),
        "distance_seen_mean": mean([r["distance"] for r in seen_rows if r["distance"] is not None]),
        "distance_unseen_mean": mean([r["distance"] for r in unseen_rows if r["distance"] is not None]),
        "familiar_distance": bundle.inference.get("familiar_distance"),
        "demo_seconds": None if args.skip_demo else demo_seconds(),
        "bundle_mb": round(sum(f.stat().st_size for f in Path(args.model).iterdir()) / 2**20, 1),
        "cases_per_site": args.cases_per_site,
        "seed": seed,
        "evaluation": "test" if args.final else "development",
        "protocol": PROTOCOL.to_json(),
        "case_scores": cases.name,
        "spacing_mm": args.spacing,
        "torch_threads": torch.get_num_threads(),
        "passes": MIRROR_PASSES,
        "command": "python benchmarks/default_model.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_text_atomic(args.out, json.dumps(figures, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "protocol"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
