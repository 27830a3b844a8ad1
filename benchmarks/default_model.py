"""Figures of a trained model on fresh cases: seen sites, two unseen sites, and the demo's time.

    .venv/bin/python benchmarks/default_model.py --train-data DATASET_JSON [--model BUNDLE]
        [--cases-per-site 3] [--seed 4242] [--spacing MM] [--out docs/results/default_model.json]

Held-out cases are generated with a new seed from the training sites' own specs (read
from the training dataset.json, which stores them resolved) and from two sites the
model never saw; each case goes through the real engine with the gate driving. A site
that annotates only the whole lesion is scored on the whole lesion only. Absent
channels are given to the model as all-zero volumes, as in training.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from UHarmonyLib.data.spec import resolve_scenario
from UHarmonyLib.data.synth import DEFAULT_CONTRAST, SiteSpec, make_case
from UHarmonyLib.data.template import load_template
from UHarmonyLib.evaluation.scoring import WHOLE, dice_scores, mean_defined
from UHarmonyLib.inference.engine import segment_volumes
from UHarmonyLib.model.weights import Bundle, load_bundle
from UHarmonyLib.resources import default_model

ROOT = Path(__file__).resolve().parent.parent
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


def case_images(case: Any, channels: list[str]) -> list[sitk.Image]:
    """One image per model channel; an absent channel becomes zeros on the case's grid."""
    first = next(iter(case.images.values()))
    zeros = sitk.Image(first.GetSize(), sitk.sitkFloat32)
    zeros.CopyInformation(first)
    return [sitk.Cast(case.images[c], sitk.sitkFloat32) if c in case.images else zeros for c in channels]


def evaluate_site(bundle: Bundle, site: SiteSpec, count: int, spacing: float, seed: int) -> list[dict[str, Any]]:
    template = load_template(spacing)
    rows = []
    for i in range(count):
        case = make_case(template, site, np.random.default_rng([seed, i, sum(map(ord, site.name))]))
        result = segment_volumes(bundle, case_images(case, bundle.channel_names))
        labels = bundle.labels if site.annotation == "full" else None
        rows.append(
            {
                "site": site.name,
                "dice": dice_scores(result.labels, case.label, labels),
                "chosen": result.gate.chosen,
                "entropy": round(result.gate.entropy, 4),
                "distance": None if result.gate.distance is None else round(result.gate.distance, 4),
                "familiar": result.gate.familiar,
            }
        )
    return rows


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
    parser.add_argument("--cases-per-site", type=int, default=3)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--spacing", type=float, default=None, help="generation spacing (default: the model's)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "default_model.json")
    parser.add_argument("--skip-demo", action="store_true", help="do not time the demo (demo_seconds: null)")
    args = parser.parse_args()
    start = time.perf_counter()
    bundle = load_bundle(args.model)
    spacing = args.spacing or float(bundle.preprocessing["spacing"][0])
    seen = [s for s in resolve_scenario(args.train_data).sites if s.name in bundle.site_names]
    if not seen:
        raise SystemExit(f"{args.train_data}: none of its sites is a site of {args.model}")
    channels = set(bundle.channel_names)
    unseen = [replace(s, channels={c: t for c, t in s.channels.items() if c in channels}) for s in UNSEEN]
    rows: list[dict[str, Any]] = []
    for site in [*seen, *unseen]:
        rows += evaluate_site(bundle, site, args.cases_per_site, spacing, args.seed)
        print(
            f"{site.name}: whole-lesion Dice {mean_defined([r['dice'][WHOLE] for r in rows if r['site'] == site.name])}"
        )
    seen_names = {s.name for s in seen}
    seen_rows = [r for r in rows if r["site"] in seen_names]
    unseen_rows = [r for r in rows if r["site"] not in seen_names]

    def per_site(subset: list[dict[str, Any]]) -> dict[str, float]:
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
        "seed": args.seed,
        "spacing_mm": spacing,
        "torch_threads": torch.get_num_threads(),
        "command": "python benchmarks/default_model.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.perf_counter() - start, 1),
        "cases": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, args.out)
    print(json.dumps({k: v for k, v in figures.items() if k != "cases"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
