"""Figures of a trained model on fresh cases: seen sites, two unseen sites, and the demo's time.

    .venv/bin/python benchmarks/default_model.py --train-data DATASET_JSON [--model BUNDLE]
        [--cases-per-site 10] [--final] [--spacing MM] [--out docs/results/default_model.json]

Held-out cases are generated from the training sites' own specs (read from the training
dataset.json, which stores them resolved) and from two sites the model never saw, with
the locked protocol's seed (benchmarks/protocol.py): its first test seed only with
`--final`, its first development seed otherwise; the model is trained elsewhere, so no
training seed enters. Each case goes through the real engine with the gate driving (and
the card's test-time mirroring, as users run it), and is scored by the project's rule:
Dice and HD95 per label the site annotates and the whole lesion, and lesion-wise Dice.
A site that annotates only the whole lesion is scored on the whole lesion only. Absent
channels are given to the model as all-zero volumes, as in training. Every case's record
(protocol.case_record's fields: scores and the gate's state) is saved beside
the summary.
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
from protocol import EvalCase, EvalSet, Scored, case_record, load_protocol, load_tests, write_case_scores
from reproduce import synthesize

from UHarmonyLib.data.spec import SynthSpec, resolve_scenario
from UHarmonyLib.data.synth import DEFAULT_CONTRAST, SiteSpec
from UHarmonyLib.evaluation.scoring import WHOLE, mean_defined
from UHarmonyLib.files.atomic import write_text_atomic
from UHarmonyLib.inference.engine import segment_volumes
from UHarmonyLib.model.weights import Bundle, load_bundle
from UHarmonyLib.resources import default_model

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = load_protocol()
UNSEEN = [  # appearances none of the built-in scenarios use
    SiteSpec(
        "unseen-lowfield",
        channels={c: dict(t) for c, t in DEFAULT_CONTRAST.items()},
        gamma=1.6,
        noise=0.07,
        blur=1.5,
        bias=0.3,
        scale=40.0,
    ),
    SiteSpec(
        "unseen-inverted-gain",
        channels={c: dict(t) for c, t in DEFAULT_CONTRAST.items()},
        gamma=0.5,
        noise=0.01,
        scale=3000.0,
        offset=200.0,
        bias=0.2,
    ),
]


def held_out_cases(bundle: Bundle, sites: list[SiteSpec], count: int, spacing: float, seed: int) -> EvalSet:
    """`count` fresh cases of every site, written as `uharmony synth` writes them and read as training reads them."""
    spec = SynthSpec("default_model", "held-out", "Held-out cases of trained and unseen sites.", sites)
    with tempfile.TemporaryDirectory(prefix="uharmony-default-model-") as tmp:
        tests = load_tests(synthesize(Path(tmp) / "tests", spec, seed, spacing, count))
    if tests.channels != bundle.channel_names or tests.labels != [lab["name"] for lab in bundle.labels]:
        raise SystemExit(f"{bundle.path}: channels or labels differ from the held-out cases' ({tests.channels})")
    return tests


def gated_record(bundle: Bundle, case: EvalCase) -> dict[str, Any]:
    """One case through the engine as users run it (gate deciding, mirroring on): its protocol record."""
    return case_record(bundle.path.name, 0, case, segment_volumes(bundle, case.images), given=False)


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
    parser.add_argument("--spacing", type=float, default=None, help="generation spacing (default: the model's)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "default_model.json")
    parser.add_argument("--skip-demo", action="store_true", help="do not time the demo (demo_seconds: null)")
    args = parser.parse_args()
    start = time.perf_counter()
    bundle = load_bundle(args.model)
    spacing = args.spacing or float(bundle.preprocessing["spacing"][0])
    seed = PROTOCOL.evaluation_seeds(args.final)[0]
    # cases=None: every site gets --cases-per-site, whatever count its training spec gave it
    seen = [replace(s, cases=None) for s in resolve_scenario(args.train_data).sites if s.name in bundle.site_names]
    if not seen:
        raise SystemExit(f"{args.train_data}: none of its sites is a site of {args.model}")
    channels = set(bundle.channel_names)
    unseen = [replace(s, channels={c: t for c, t in s.channels.items() if c in channels}) for s in UNSEEN]
    tests = held_out_cases(bundle, [*seen, *unseen], args.cases_per_site, spacing, seed)
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
        "dice_whole_lesion_seen": per_site(seen_rows),
        "dice_whole_lesion_unseen": per_site(unseen_rows),
        "dice_per_label": {
            s: {
                lab: mean_defined([r["dice"][lab] for r in rows if r["site"] == s and lab in r["dice"]])
                for lab in labels
            }
            for s in dict.fromkeys(r["site"] for r in rows)
        },
        "gate_accuracy_seen": mean([float(r["chosen"] == r["site"]) for r in seen_rows]),
        "entropy_seen_mean": mean([r["entropy"] for r in seen_rows]),
        "entropy_unseen_mean": mean([r["entropy"] for r in unseen_rows]),
        "unfamiliar_flagged_unseen": mean([float(not r["familiar"]) for r in unseen_rows]),
        "unfamiliar_flagged_seen": mean([float(not r["familiar"]) for r in seen_rows]),
        "distance_seen_mean": mean([r["distance"] for r in seen_rows if r["distance"] is not None]),
        "distance_unseen_mean": mean([r["distance"] for r in unseen_rows if r["distance"] is not None]),
        "familiar_distance": bundle.inference.get("familiar_distance"),
        "demo_seconds": None if args.skip_demo else demo_seconds(),
        "cases_per_site": args.cases_per_site,
        "seed": seed,
        "evaluation": "test" if args.final else "development",
        "protocol": PROTOCOL.to_json(),
        "case_scores": cases.name,
        "spacing_mm": spacing,
        "torch_threads": torch.get_num_threads(),
        "command": "python benchmarks/default_model.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_text_atomic(args.out, json.dumps(figures, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "protocol"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
