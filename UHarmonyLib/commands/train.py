"""`uharmony train`: MSD datasets in, a model bundle out (see UHarmonyLib.training).

A case that lacks a channel is trained with that channel all zeros, and such a case is
segmented the same way: `uharmony segment` wants one file per card channel and refuses
constant volumes, so call `UHarmonyLib.inference.engine.segment_volumes(bundle, images)` with
an all-zero image in the missing channel's place (`z = sitk.Image(ref.GetSize(),
sitk.sitkFloat32); z.CopyInformation(ref)`, `ref` a present channel).
"""

from __future__ import annotations

import argparse
from typing import Any

from UHarmonyLib.errors import InputError
from UHarmonyLib.options import PROGRESS, Verbs, add_command, field_options, from_args
from UHarmonyLib.progress import JsonReporter, Reporter
from UHarmonyLib.training.config import TrainConfig, parse_site_weights


def add_parser(verbs: Verbs) -> None:
    """The options are TrainConfig's command-line fields (training/config.py), then --progress."""
    summary = "train a model bundle on MSD-layout datasets (e.g. from `uharmony synth`)"
    add_command(verbs, "train", summary, [*field_options(TrainConfig), PROGRESS])


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's settings from the parsed command line; what argparse cannot check is refused in one line here."""
    for flag, sizes in (("--patch", args.patch), ("--spacing", args.spacing)):
        if sizes is not None and len(sizes) not in (1, 3):
            raise InputError(f"{flag} needs one or three sizes, got {len(sizes)}")
    return from_args(TrainConfig, args, site_weights=parse_site_weights(args.site_weights or []))


def run_train(args: argparse.Namespace, reporter: Reporter) -> dict[str, Any]:
    """Train, then (for people) print one summary line; JSON mode has the result event instead."""
    from UHarmonyLib.training import train_run

    payload = train_run(config_from_args(args), reporter)
    if not isinstance(reporter, JsonReporter):
        metrics = payload["metrics"]
        dice = metrics.get("mean_dice_whole_lesion")
        best = f"; best mean whole-lesion Dice {dice} at step {metrics['selected_step']}" if dice is not None else ""
        print(
            f"Wrote {payload['bundle']} ({payload['steps']} steps, {payload['seconds']:.0f} s, "
            f"{payload['seconds_per_step']:.2f} s/step{best})"
        )
    return payload
