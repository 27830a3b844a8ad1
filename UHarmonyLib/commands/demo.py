"""`uharmony demo`: the main job — segment the bundled sample with the bundled default model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from UHarmonyLib.commands import segment
from UHarmonyLib.errors import InputError
from UHarmonyLib.options import DEVICE, PROGRESS, Option, Verbs, add_command, defaults
from UHarmonyLib.progress import JsonReporter, Reporter
from UHarmonyLib.resources import SAMPLE_DATA, default_model

OPTIONS = [
    Option("--out", type=Path, default=Path("out"), help="folder for the results (default: out/)"),
    DEVICE,
    PROGRESS,
]


def add_parser(verbs: Verbs) -> None:
    add_command(verbs, "demo", "segment the bundled sample case with the bundled default model", OPTIONS)


def sample_channels(channel_names: list[str]) -> tuple[list[Path], Path]:
    """The sample's file for each model channel, in the card's order, and its ground truth."""
    from UHarmonyLib.data.datasets import DATASET_JSON, read_dataset

    sample = SAMPLE_DATA / DATASET_JSON
    case = read_dataset(sample)[0]
    missing = [c for c in channel_names if c not in case.channels]
    if missing:
        raise InputError(f"{sample}: the sample case has no {', '.join(missing)} channel, which the model needs")
    return [case.images[case.channels.index(c)] for c in channel_names], case.label


def run_demo(args: argparse.Namespace, reporter: Reporter) -> dict:
    import SimpleITK as sitk

    from UHarmonyLib.evaluation.scoring import dice_scores
    from UHarmonyLib.files.overview import write_overview
    from UHarmonyLib.files.volumes import read_volume
    from UHarmonyLib.model.card import read_card

    start = time.perf_counter()
    model = default_model()
    images, truth = sample_channels([c["name"] for c in read_card(model)["channels"]])
    args.out.mkdir(parents=True, exist_ok=True)
    seg_args = argparse.Namespace(
        **{
            **defaults(segment.OPTIONS),
            "model": model,
            "channels": images,
            "out": args.out / "sample_segmentation.seg.nrrd",
            "device": args.device,
            "gate_json": args.out / "sample_gate.json",
            "gate_map": args.out / "sample_gate_map.seg.nrrd",
        }
    )
    payload = segment.run_segment(seg_args, reporter, emit_result=False)
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
