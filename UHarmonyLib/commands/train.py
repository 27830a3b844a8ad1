"""`uharmony train`: MSD datasets in, a model bundle out (see UHarmonyLib.training).

A case that lacks a channel is trained with that channel all zeros, and such a case is
segmented the same way: `uharmony segment` wants one file per card channel and refuses
constant volumes, so call `UHarmonyLib.inference.segment_volumes(bundle, images)` with
an all-zero image in the missing channel's place (`z = sitk.Image(ref.GetSize(),
sitk.sitkFloat32); z.CopyInformation(ref)`, `ref` a present channel).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from UHarmonyLib.errors import InputError
from UHarmonyLib.progress import JsonReporter, Reporter

if TYPE_CHECKING:
    from UHarmonyLib.training import TrainConfig


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's settings from the parsed command line (training imports stay lazy)."""
    from UHarmonyLib.training import TrainConfig

    if args.patch is not None and len(args.patch) not in (1, 3):
        raise InputError(f"--patch needs one or three sizes, got {len(args.patch)}")
    if args.spacing is not None and len(args.spacing) not in (1, 3):
        raise InputError(f"--spacing needs one or three sizes, got {len(args.spacing)}")
    extra = {"filters": tuple(args.filters)} if args.filters else {}
    weights: dict[str, float] = {}
    for item in args.site_weight:
        name, sep, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise InputError(f"--site-weight {item}: expected SITE=WEIGHT, for example hospital-b=2")
    return TrainConfig(
        data=args.data,
        out=args.out,
        backbone=args.backbone,
        norm=args.norm,
        feature_size=args.feature_size,
        restore_degree=args.restore_degree,
        site_params=args.site_params,
        steps=args.steps,
        epochs=args.epochs,
        patch=tuple(args.patch),
        batch_size=args.batch,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        spacing=tuple(args.spacing) if args.spacing else None,
        val_every=args.val_every,
        val_fraction=args.val_fraction,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        channel_dropout=args.channel_dropout,
        site_weights=weights,
        resume=args.resume,
        harmonize=args.harmonize,
        **extra,
    )


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
