"""`uharmony train`: MSD datasets in, a model bundle out (see UHarmonyLib.training).

A case that lacks a channel is trained with that channel all zeros, and such a case is
segmented the same way: `uharmony segment` wants one file per card channel and refuses
constant volumes, so call `UHarmonyLib.inference.engine.segment_volumes(bundle, images)` with
an all-zero image in the missing channel's place (`z = sitk.Image(ref.GetSize(),
sitk.sitkFloat32); z.CopyInformation(ref)`, `ref` a present channel).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from UHarmonyLib.errors import InputError
from UHarmonyLib.options import PROGRESS, Verbs, add_command, field_options, values_of
from UHarmonyLib.progress import JsonReporter, Reporter
from UHarmonyLib.training.config import TrainConfig, parse_site_weights


def add_parser(verbs: Verbs) -> None:
    """The options are TrainConfig's command-line fields (training/config.py), then --progress.

    An option left out parses to None (TrainConfig supplies the default), so `--resume` can
    tell the options given from those it takes from the interrupted run's record.
    """
    summary = "train a model bundle on MSD-layout datasets (e.g. from `uharmony synth`)"
    options = [replace(o, default=None) for o in field_options(TrainConfig)]
    add_command(verbs, "train", summary, [*options, PROGRESS])


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given on the command line, with their parsed values."""
    return {k: v for k, v in values_of(field_options(TrainConfig), args).items() if v is not None and v is not False}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's settings from the parsed command line; what argparse cannot check is refused in one line here."""
    given = given_options(args)
    for flag, sizes in (("--patch", given.get("patch")), ("--spacing", given.get("spacing"))):
        if sizes is not None and len(sizes) not in (1, 3):
            raise InputError(f"{flag} needs one or three sizes, got {len(sizes)}")
    if "site_weights" in given:
        given["site_weights"] = parse_site_weights(given["site_weights"])
    return TrainConfig(**given)


def run_train(args: argparse.Namespace, reporter: Reporter) -> dict[str, Any]:
    """Train (or, with --resume, continue the run recorded in --out's checkpoints), then (for people) print one
    summary line; JSON mode has the result event instead. Under torchrun, rank 0 alone prints."""
    from UHarmonyLib.training import train_run
    from UHarmonyLib.training.distributed import World
    from UHarmonyLib.training.loop import resume_config

    config = config_from_args(args)
    if config.resume:
        config = resume_config(config, given_options(args))
    payload = train_run(config, reporter)
    if not isinstance(reporter, JsonReporter) and World.from_env().main:
        metrics = payload["metrics"]
        dice = metrics.get("mean_dice_whole_lesion")
        best = f"; best mean whole-lesion Dice {dice} at step {metrics['selected_step']}" if dice is not None else ""
        print(
            f"Wrote {payload['bundle']} ({payload['steps']} steps, {payload['seconds']:.0f} s, "
            f"{payload['seconds_per_step']:.2f} s/step{best})"
        )
    return payload
