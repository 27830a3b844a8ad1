"""The `uharmony` command line; Slicer runs the same commands with `--progress json`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from UHarmonyLib import __version__
from UHarmonyLib.errors import UHarmonyError
from UHarmonyLib.progress import JsonReporter, Reporter, make_reporter


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", choices=["bar", "json"], default="bar", help="json: one JSON event per line")


def _add_no_mirror(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-mirror",
        action="store_true",
        help="skip test-time mirroring (one pass instead of one per mirrored axis: faster, slightly less accurate)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uharmony", description="Harmonized multi-site brain-lesion segmentation.")
    parser.add_argument("--version", action="version", version=f"uharmony {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True)

    seg = verbs.add_parser("segment", help="segment one case with a model bundle")
    seg.add_argument("--model", required=True, type=Path, help="model bundle folder")
    seg.add_argument(
        "channels",
        nargs="+",
        type=Path,
        metavar="CHANNEL_FILE",
        help="one file or DICOM folder per model channel, in the card's order; '-' for a channel the case lacks",
    )
    seg.add_argument("--out", required=True, type=Path, help="label map (.nii.gz, .nrrd, .seg.nrrd, .mha)")
    seg.add_argument("--site", default="auto", help="auto (domain gate) or a site name from the model card")
    seg.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    seg.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    seg.add_argument("--gate-json", type=Path, help="write the gate's site probabilities as JSON")
    seg.add_argument("--gate-map", type=Path, help="write the per-patch most likely site as a label volume")
    seg.add_argument("--probabilities", type=Path, help="write per-class probabilities (vector volume)")
    _add_no_mirror(seg)
    seg.add_argument(
        "--harmonize", metavar="METHOD", help="optional check: the model card's harmonization (the card decides)"
    )
    _add_progress(seg)

    models = verbs.add_parser("models", help="inspect model bundles")
    mverbs = models.add_subparsers(dest="models_verb", required=True)
    info = mverbs.add_parser("info", help="print a bundle's model card")
    info.add_argument("path", type=Path)
    info.add_argument("--json", action="store_true", help="print the card as JSON")
    lst = mverbs.add_parser("list", help="list bundles in the bundled and user model folders")
    lst.add_argument("folders", nargs="*", type=Path)
    lst.add_argument("--json", action="store_true")

    demo = verbs.add_parser("demo", help="segment the bundled sample case with the bundled default model")
    demo.add_argument("--out", type=Path, default=Path("out"), help="folder for the results (default: out/)")
    demo.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _add_progress(demo)

    synth = verbs.add_parser("synth", help="write a synthetic multi-site lesion dataset (Decathlon layout)")
    synth.add_argument("--scenario", metavar="NAME|SPEC.json", help="built-in scenario, 'list', or a JSON spec file")
    synth.add_argument("--out", type=Path, metavar="DIR", help="dataset folder: new or empty (or see --overwrite)")
    synth.add_argument("--cases-per-site", type=int, default=4, metavar="N", help="default 4 (a site's 'cases' wins)")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    synth.add_argument("--spacing", type=float, default=2.0, metavar="MM", help="generation grid in mm (default 2)")
    synth.add_argument("--list-scenarios", action="store_true", help="print the built-in scenarios")
    synth.add_argument("--overwrite", action="store_true", help="replace a dataset an earlier synth wrote in DIR")
    _add_progress(synth)

    tr = verbs.add_parser("train", help="train a model bundle on MSD-layout datasets (e.g. from `uharmony synth`)")
    tr.add_argument("--data", required=True, action="append", type=Path, metavar="DATASET_JSON", help="or its folder")
    tr.add_argument("--out", required=True, type=Path, metavar="BUNDLE_DIR", help="new bundle folder, e.g. my-model-v1")
    tr.add_argument("--backbone", default="dynunet", choices=["dynunet", "swinunetr"])
    tr.add_argument("--norm", default="uharmony", choices=["uharmony", "instance", "dsbn"])
    length = tr.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, metavar="N", help="optimizer steps (default 1000)")
    length.add_argument("--epochs", type=int, metavar="N", help="epochs of one patch per training case")
    tr.add_argument("--patch", type=int, nargs="+", default=[64], metavar="D", help="patch size: D or D H W (64)")
    tr.add_argument("--batch", type=int, default=2, metavar="N", help="patches per step (default 2)")
    tr.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the one-cycle schedule (2e-3)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    tr.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    tr.add_argument("--spacing", type=float, nargs="+", metavar="MM", help="model grid in mm (default: cases' median)")
    tr.add_argument("--filters", type=int, nargs="+", metavar="F", help="DynUNet widths (16 32 64 128 256)")
    tr.add_argument("--feature-size", type=int, default=12, help="SwinUNETR feature size (12)")
    tr.add_argument(
        "--restore-degree",
        type=int,
        default=3,
        metavar="N",
        help="uharmony: degree of the site-specific restore polynomial below full resolution (1-5; 3)",
    )
    tr.add_argument(
        "--site-params",
        default="residual",
        metavar="residual|independent",
        help="site rows trained as a shared value plus a site offset (default), or each on its own",
    )
    tr.add_argument("--val-every", type=int, default=0, metavar="N", help="validate every N steps (0: 5 times)")
    tr.add_argument("--val-fraction", type=float, default=0.2, help="held-out share of each site with >= 3 cases")
    tr.add_argument("--checkpoint-every", type=int, default=50, metavar="N", help="checkpoint every N steps (50)")
    tr.add_argument("--log-every", type=int, default=10, metavar="N", help="log the loss every N steps (10)")
    tr.add_argument("--channel-dropout", type=float, default=0.1, help="chance of zeroing a present channel (0.1)")
    tr.add_argument(
        "--site-weight",
        action="append",
        default=[],
        metavar="SITE=W",
        help="draw SITE's patches W times as often as a weight-1 site (repeatable; default 1 each)",
    )
    tr.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    tr.add_argument(
        "--harmonize", metavar="METHOD", help="harmonize first: n4, zscore, percentile, nyul, match, whitestripe"
    )
    _add_progress(tr)

    ev = verbs.add_parser("evaluate", help="score a model bundle on a labelled dataset: Dice, HD95, gate accuracy")
    ev.add_argument("--model", required=True, type=Path, help="model bundle folder")
    ev.add_argument("--data", required=True, type=Path, metavar="DATASET_JSON", help="or its folder")
    ev.add_argument("--out", required=True, type=Path, metavar="REPORT.json", help="a REPORT.md is written beside it")
    ev.add_argument("--site", default="auto", choices=["auto", "given"], help="auto: the gate; given: each case's site")
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _add_no_mirror(ev)
    _add_progress(ev)

    add = verbs.add_parser("add-site", help="add a site to a model from a few annotated cases (new bundle version)")
    add.add_argument("--model", required=True, type=Path, help="parent bundle (never modified)")
    add.add_argument("--data", required=True, type=Path, metavar="LOCAL_DATASET_JSON", help="the site's cases")
    add.add_argument("--site", required=True, metavar="NAME", help="the new site's name")
    add.add_argument("--out", required=True, type=Path, metavar="NEW_BUNDLE", help="new bundle folder, e.g. name-v2")
    add.add_argument("--train-backbone", action="store_true", help="fine-tune the shared backbone too (old sites move)")
    add.add_argument("--new-label", action="append", metavar="NAME", help="a label the old sites never annotated")
    add.add_argument("--steps", type=int, default=150, metavar="N", help="fine-tuning steps (default 150)")
    add.add_argument("--seed", type=int, default=0)
    add.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _add_progress(add)

    har = verbs.add_parser("harmonize", help="harmonize one image's intensities (fitted on a dataset if needed)")
    har.add_argument("--method", help="n4, zscore, percentile, nyul, match or whitestripe (or from --params)")
    har.add_argument("--fit", type=Path, metavar="DATASET_JSON", help="learn the parameters from this dataset")
    har.add_argument("--channel", metavar="NAME", help="the image's channel (needed when there are several)")
    har.add_argument("--in", dest="input", required=True, type=Path, metavar="FILE", help="the image to harmonize")
    har.add_argument("--out", required=True, type=Path, metavar="FILE", help="the harmonized image")
    har.add_argument("--params-out", type=Path, metavar="JSON", help="write the fitted parameters")
    har.add_argument("--params", type=Path, metavar="JSON", help="parameters from --params-out, or a model bundle")
    _add_progress(har)

    dia = verbs.add_parser("diagnose", help="do sites differ in appearance, structure, both or neither? (HTML report)")
    dia.add_argument("--data", required=True, type=Path, metavar="DATASET_JSON", help="or its folder")
    dia.add_argument("--model", type=Path, metavar="BUNDLE", help="add the model's evidence (gate, Dice)")
    dia.add_argument("--out", required=True, type=Path, metavar="REPORT_DIR", help="report.html and summary.json")
    dia.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _add_progress(dia)

    from UHarmonyLib.commands.federated import add_federated_parsers

    add_federated_parsers(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reporter = make_reporter(getattr(args, "progress", None))
    try:
        if args.verb == "segment":
            from UHarmonyLib.commands.segment import run_segment

            run_segment(args, reporter)
        elif args.verb == "models":
            from UHarmonyLib.commands.models import run_models

            run_models(args)
        elif args.verb == "demo":
            from UHarmonyLib.commands.demo import run_demo

            run_demo(args, reporter)
        elif args.verb == "synth":
            from UHarmonyLib.commands.synth import run_synth

            run_synth(args, reporter)
        elif args.verb == "train":
            from UHarmonyLib.commands.train import run_train

            run_train(args, reporter)
        elif args.verb == "add-site":
            from UHarmonyLib.commands.add_site import run_add_site

            run_add_site(args, reporter)
        elif args.verb == "evaluate":
            from UHarmonyLib.commands.evaluate import run_evaluate

            run_evaluate(args, reporter)
        elif args.verb == "harmonize":
            from UHarmonyLib.commands.harmonize import run_harmonize

            run_harmonize(args, reporter)
        elif args.verb == "diagnose":
            from UHarmonyLib.commands.diagnose import run_diagnose

            run_diagnose(args, reporter)
        elif args.verb == "federated":
            from UHarmonyLib.commands.federated import run_federated

            run_federated(args, reporter)
        return 0
    except UHarmonyError as e:
        _fail(reporter, str(e))
        return e.exit_code
    except KeyboardInterrupt:
        _fail(reporter, "interrupted")
        return 130
    except Exception as e:
        if os.environ.get("UHARMONY_DEBUG"):
            raise
        _fail(reporter, f"internal error: {type(e).__name__}: {e} (set UHARMONY_DEBUG=1 for a traceback)")
        return 1


def _fail(reporter: Reporter, message: str) -> None:
    message = " ".join(message.split())
    if isinstance(reporter, JsonReporter):
        reporter.error(message)
    sys.stderr.write(f"uharmony: error: {message}\n")


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def elapsed(start: float) -> float:
    return round(time.perf_counter() - start, 3)
