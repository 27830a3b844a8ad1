"""`uharmony add-site`: a new bundle version that knows one more site; the parent is untouched."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from UHarmonyLib.progress import JsonReporter, Reporter


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
        command="uharmony " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    payload = add_site(config, reporter)
    if not isinstance(reporter, JsonReporter):
        after = (payload["metrics"].get("after") or {}).get("mean_dice_whole_lesion")
        before = (payload["metrics"].get("before") or {}).get("mean_dice_whole_lesion")
        figures = f"; held-out whole-lesion Dice {before} -> {after}" if after is not None else ""
        print(f"Wrote {payload['bundle']} (site {payload['site']} added to {payload['parent']}{figures})")
    return payload
