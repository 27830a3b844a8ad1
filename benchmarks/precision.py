"""bfloat16 against float32 inference on cases with a lesion of realistic size (inference.py's "bf16_agreement").

inference.py's dice_agreement compares against a MONAI pipeline on the MNI template, a brain without a lesion, where
the few voxels either side calls lesion are noise. Here the engine segments cases with lesions twice, in float32 and
under bfloat16 autocast (one pass each, no mirroring: a pass is what precision changes), and the two label maps are
compared on the input grid:

- the bundled default model on the bundled sample case (what `uharmony demo` runs; a held-out protocol, 2 x 2 x 3 mm);
- the benchmark's model as the timing figures run it (the caller's 1 mm copy of the starter, 96^3 windows) on a
  synthetic 1 mm case of its site clinic-a (the generator's default FLAIR site, which the starter script trains on)
  from the protocol's first development seed.

The headline is the worst case: the fewest voxels with the same label, the lowest whole-lesion Dice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from protocol import load_protocol

from UHarmonyLib.commands.demo import sample_channels
from UHarmonyLib.data.synth import SiteSpec, make_case
from UHarmonyLib.data.template import load_template
from UHarmonyLib.evaluation.scoring import WHOLE, dice_scores
from UHarmonyLib.files.volumes import read_volume
from UHarmonyLib.inference.engine import segment_volumes
from UHarmonyLib.model.weights import Bundle, load_bundle
from UHarmonyLib.resources import default_model

GOAL = 0.99  # whole-lesion Dice of bfloat16 against float32
PRECISIONS = ("float32", "bfloat16")


def lesion_ml(label: sitk.Image) -> float:
    return float((sitk.GetArrayViewFromImage(label) > 0).sum() * np.prod(label.GetSpacing()) / 1000.0)


def agreement_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Whole-lesion Dice of two predictions, 1 when neither has a lesion (they agree; neither is a reference)."""
    total = int((a > 0).sum() + (b > 0).sum())
    return 2.0 * int(((a > 0) & (b > 0)).sum()) / total if total else 1.0


def compare(bundle: Bundle, images: list[sitk.Image], truth: sitk.Image, case: str) -> dict[str, Any]:
    """One case in float32 and in bfloat16: label agreement, whole-lesion Dice between them and against the truth."""
    labels, seconds = {}, {}
    for precision in PRECISIONS:
        start = time.perf_counter()
        labels[precision] = segment_volumes(bundle, images, precision=precision, passes=1).labels
        seconds[precision] = round(time.perf_counter() - start, 2)
    low, full = (sitk.GetArrayViewFromImage(labels[p]) for p in ("bfloat16", "float32"))
    return {
        "case": case,
        "model": bundle.label_text,
        "voxel": float((low == full).mean()),
        "dice": round(agreement_dice(low, full), 4),
        "differing_voxels": int((low != full).sum()),
        "lesion_ml": {"truth": round(lesion_ml(truth), 2), **{p: round(lesion_ml(labels[p]), 2) for p in PRECISIONS}},
        "dice_vs_truth": {p: dice_scores(labels[p], truth, bundle.labels)[WHOLE] for p in PRECISIONS},
        "seconds": seconds,
    }


def measure(benchmark_model: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Both cases' rows and the worst of them, with the goal."""
    default = load_bundle(default_model())
    paths, truth = sample_channels(default.channel_names)
    log(f"bf16 agreement: {default.label_text} on the bundled sample case")
    rows = [compare(default, [read_volume(p) for p in paths], read_volume(truth), "bundled sample case")]
    seed = load_protocol().development_seeds[0]
    log(f"bf16 agreement: {benchmark_model.name} on a 1 mm synthetic clinic-a case (seed {seed})")
    case = make_case(load_template(1.0), SiteSpec("clinic-a"), np.random.default_rng(seed))
    bundle = load_bundle(benchmark_model)
    rows.append(compare(bundle, [case.images["FLAIR"]], case.label, f"synthetic clinic-a, 1 mm, seed {seed}"))
    worst = min(rows, key=lambda r: (r["dice"], r["voxel"]))
    voxel = min(r["voxel"] for r in rows)
    return {
        "voxel": voxel,
        "dice": worst["dice"],
        "case": f"{worst['case']} ({worst['model']})",
        "goal": {"op": ">=", "value": GOAL, "met": worst["dice"] >= GOAL},
        "cases": rows,
    }
