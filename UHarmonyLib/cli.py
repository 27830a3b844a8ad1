"""The `uharmony` command line; Slicer runs the same commands with `--progress json`.

Each command module (UHarmonyLib.commands) builds its own parser from its option
descriptions and imports torch or MONAI only when it runs, so building every parser
stays cheap.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from UHarmonyLib import __version__
from UHarmonyLib.commands import add_site, demo, diagnose, evaluate, federated, harmonize, models, segment, synth, train
from UHarmonyLib.errors import UHarmonyError
from UHarmonyLib.progress import JsonReporter, Reporter, make_reporter

COMMANDS = (segment, models, demo, synth, train, evaluate, add_site, harmonize, diagnose, federated)  # --help order
RUN: dict[str, Callable[[argparse.Namespace, Reporter], object]] = {
    "segment": segment.run_segment,
    "models": lambda args, _reporter: models.run_models(args),
    "demo": demo.run_demo,
    "synth": synth.run_synth,
    "train": train.run_train,
    "evaluate": evaluate.run_evaluate,
    "add-site": add_site.run_add_site,
    "harmonize": harmonize.run_harmonize,
    "diagnose": diagnose.run_diagnose,
    "federated": federated.run_federated,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uharmony", description="Harmonized multi-site brain-lesion segmentation.")
    parser.add_argument("--version", action="version", version=f"uharmony {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True)
    for command in COMMANDS:
        command.add_parser(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reporter = make_reporter(getattr(args, "progress", None))
    try:
        RUN[args.verb](args, reporter)
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
