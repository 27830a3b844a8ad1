"""`uharmony demo`: the main job — segment the bundled sample with the bundled default model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import SimpleITK as sitk

from UHarmonyLib.commands.segment import run_segment
from UHarmonyLib.data.datasets import DATASET_JSON, read_dataset
from UHarmonyLib.errors import InputError
from UHarmonyLib.evaluation.scoring import dice_scores
from UHarmonyLib.files.overview import write_overview
from UHarmonyLib.files.volumes import read_volume
from UHarmonyLib.model.card import read_card
from UHarmonyLib.progress import JsonReporter, Reporter
from UHarmonyLib.resources import SAMPLE_DATA, default_model

SAMPLE = SAMPLE_DATA / DATASET_JSON


def sample_channels(channel_names: list[str]) -> tuple[list[Path], Path]:
    """The sample's file for each model channel, in the card's order, and its ground truth."""
    case = read_dataset(SAMPLE)[0]
    missing = [c for c in channel_names if c not in case.channels]
    if missing:
        raise InputError(f"{SAMPLE}: the sample case has no {', '.join(missing)} channel, which the model needs")
    return [case.images[case.channels.index(c)] for c in channel_names], case.label


def run_demo(args: argparse.Namespace, reporter: Reporter) -> dict:
    start = time.perf_counter()
    model = default_model()
    images, truth = sample_channels([c["name"] for c in read_card(model)["channels"]])
    args.out.mkdir(parents=True, exist_ok=True)
    seg_args = argparse.Namespace(
        model=model,
        channels=images,
        out=args.out / "sample_segmentation.seg.nrrd",
        site="auto",
        device=args.device,
        precision="auto",
        gate_json=args.out / "sample_gate.json",
        gate_map=args.out / "sample_gate_map.seg.nrrd",
        probabilities=None,
        harmonize=None,
        no_mirror=False,
    )
    payload = run_segment(seg_args, reporter, emit_result=False)
    labels = read_card(seg_args.model)["labels"]
    pred = sitk.ReadImage(str(seg_args.out))
    dice = dice_scores(pred, sitk.ReadImage(str(truth)), labels)
    overview = args.out / "sample_overview.png"
    write_overview(read_volume(images[0]), pred, labels, overview, title=f"{payload['model']}: sample case")
    seconds = round(time.perf_counter() - start, 2)
    summary = {"dice": dice, "overview": str(overview), "demo_seconds": seconds}
    if isinstance(reporter, JsonReporter):
        reporter.result({**payload, **summary})
    else:
        scores = ", ".join(
            f"{k} {'n/a (not in the ground truth)' if v is None else f'{v:.3f}'}" for k, v in dice.items()
        )
        print(f"Dice against the sample's ground truth: {scores}")
        print(f"Overview: {overview}")
        print(f"Demo finished in {seconds:.1f} s")
    return {**payload, **summary}
