"""The `uharmony` command line; Slicer runs the same commands with `--progress json`.

Each command module (UHarmonyLib.commands) builds its own parser from its option
descriptions and imports torch or MONAI only when it runs, so building every parser
stays cheap.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from UHarmonyLib import __version__
from UHarmonyLib.commands import (
    add_site,
    demo,
    diagnose,
    evaluate,
    federated,
    harmonize,
    models,
    segment,
    synth,
    train,
    web,
)
from UHarmonyLib.errors import UHarmonyError
from UHarmonyLib.progress import JsonReporter, Reporter, make_reporter

# in --help order
COMMANDS = (segment, models, demo, synth, train, evaluate, add_site, harmonize, diagnose, federated, web)
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
    "web": lambda args, _reporter: web.run_web(args),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uharmony", description="Harmonized multi-site brain-lesion segmentation.")
    parser.add_argument("--version", action="version", version=f"uharmony {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True)
    for command in COMMANDS:
        command.add_parser(verbs)
    return parser


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reporter = make_reporter(getattr(args, "progress", None))
    # kill, schedulers and Slicer's Cancel send SIGTERM: stop as Ctrl-C does (train saves a checkpoint first)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        RUN[args.verb](args, reporter)
        sys.stdout.flush()  # a reader that has left (`| head`) shows here, not in Python's exit
        return 0
    except UHarmonyError as e:
        _fail(reporter, str(e))
        return e.exit_code
    except KeyboardInterrupt as e:
        _fail(reporter, str(e) or "interrupted")
        return 130
    except Exception as e:
        if isinstance(e, BrokenPipeError) and _stdout_reader_gone():
            return PIPE_CLOSED
        if os.environ.get("UHARMONY_DEBUG"):
            raise
        _fail(reporter, f"internal error: {type(e).__name__}: {e} (set UHARMONY_DEBUG=1 for a traceback)")
        return 1


PIPE_CLOSED = 141  # the shell's status of a tool that SIGPIPE stopped, as `yes | head -1` gives


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has left; if so stdout goes to devnull.

    Like other Unix tools the command then stops quietly; devnull keeps Python's final
    flush from printing a second error. (Python ignores SIGPIPE, so a write raises instead.)
    """
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # a stream without a file (tests capturing it)
        return False
    if not hasattr(select, "poll"):  # Windows cannot ask: take the error at its word
        gone = True
    else:
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        gone = any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return gone


def _fail(reporter: Reporter, message: str) -> None:
    message = " ".join(message.split())
    if isinstance(reporter, JsonReporter):
        reporter.error(message)
    sys.stderr.write(f"uharmony: error: {message}\n")
