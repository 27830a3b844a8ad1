"""`uharmony add-site`: a new bundle version that knows one more site; the parent is untouched."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from UHarmonyLib.options import DEVICE, PROGRESS, Option, Verbs, add_command, shareable_command
from UHarmonyLib.progress import JsonReporter, Reporter

OPTIONS = [
    Option("--model", required=True, type=Path, help="parent bundle (never modified)"),
    Option("--data", required=True, type=Path, metavar="LOCAL_DATASET_JSON", help="the site's cases"),
    Option("--site", required=True, metavar="NAME", help="the new site's name"),
    Option("--out", required=True, type=Path, metavar="NEW_BUNDLE", help="new bundle folder, e.g. name-v2"),
    Option("--train-backbone", action="store_true", help="fine-tune the shared backbone too (old sites move)"),
    Option("--new-label", action="append", metavar="NAME", help="a label the old sites never annotated"),
    Option("--steps", type=int, default=150, metavar="N", help="fine-tuning steps (default 150)"),
    Option("--seed", type=int, default=0),
    DEVICE,
    PROGRESS,
]


def add_parser(verbs: Verbs) -> None:
    add_command(verbs, "add-site", "add a site to a model from a few annotated cases (new bundle version)", OPTIONS)


def run_add_site(args: argparse.Namespace, reporter: Reporter) -> dict[str, Any]:
    from UHarmonyLib.training.add_site import AddSiteConfig, add_site

    config = AddSiteConfig(
        model=args.model,
        data=args.data,
        site=args.site,
        out=args.out,
        steps=args.steps,
        train_backbone=args.train_backbone,
        new_labels=list(args.new_label or []),
        seed=args.seed,
        device=args.device,
        command=shareable_command(["uharmony", *sys.argv[1:]]),
    )
    payload = add_site(config, reporter)
    if not isinstance(reporter, JsonReporter):
        after = (payload["metrics"].get("after") or {}).get("mean_dice_whole_lesion")
        before = (payload["metrics"].get("before") or {}).get("mean_dice_whole_lesion")
        figures = f"; held-out whole-lesion Dice {before} -> {after}" if after is not None else ""
        print(f"Wrote {payload['bundle']} (site {payload['site']} added to {payload['parent']}{figures})")
    return payload
