"""`uharmony demo`: the main job — segment the bundled sample with the bundled default model."""

from __future__ import annotations

import argparse
import time

import SimpleITK as sitk

from UHarmonyLib.bundle import read_card
from UHarmonyLib.commands.segment import run_segment
from UHarmonyLib.errors import InputError
from UHarmonyLib.metrics import dice_scores
from UHarmonyLib.overview import write_overview
from UHarmonyLib.progress import JsonReporter, Reporter
from UHarmonyLib.resources import SAMPLE_DATA, default_model
from UHarmonyLib.volumes import read_volume

SAMPLE_IMAGE = SAMPLE_DATA / "sample_flair.nii.gz"
SAMPLE_LABEL = SAMPLE_DATA / "sample_label.nii.gz"


def run_demo(args: argparse.Namespace, reporter: Reporter) -> dict:
    start = time.perf_counter()
    for path in (SAMPLE_IMAGE, SAMPLE_LABEL):
        if not path.is_file():
            raise InputError(f"{path}: bundled sample case is missing from Resources/SampleData")
    args.out.mkdir(parents=True, exist_ok=True)
    seg_args = argparse.Namespace(
        model=default_model(),
        channels=[SAMPLE_IMAGE],
        out=args.out / "sample_segmentation.seg.nrrd",
        site="auto",
        device=args.device,
        precision="auto",
        gate_json=args.out / "sample_gate.json",
        gate_map=args.out / "sample_gate_map.seg.nrrd",
        probabilities=None,
    )
    payload = run_segment(seg_args, reporter, emit_result=False)
    labels = read_card(seg_args.model)["labels"]
    pred = sitk.ReadImage(str(seg_args.out))
    dice = dice_scores(pred, sitk.ReadImage(str(SAMPLE_LABEL)), labels)
    overview = args.out / "sample_overview.png"
    write_overview(read_volume(SAMPLE_IMAGE), pred, labels, overview, title=f"{payload['model']}: sample case")
    seconds = round(time.perf_counter() - start, 2)
    summary = {"dice": dice, "overview": str(overview), "demo_seconds": seconds}
    if isinstance(reporter, JsonReporter):
        reporter.result({**payload, **summary})
    else:
        print("Dice against the sample's ground truth: " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
        print(f"Overview: {overview}")
        print(f"Demo finished in {seconds:.1f} s")
    return {**payload, **summary}
