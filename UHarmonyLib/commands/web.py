"""`uharmony web`: the browser edition (UHarmonyWeb, on trame-slicer) served from this machine.

trame and Slicer's MRML are imported only when the command runs, so the parser builds without
them and a machine without the `web` extra gets one line saying how to install it.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from pathlib import Path

from UHarmonyLib.errors import InputError, UHarmonyError
from UHarmonyLib.options import DEVICE, Option, Verbs, add_command

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_WORK = Path.home() / ".uharmony" / "web"
OPTIONS = [
    Option("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)"),
    Option("--port", type=int, default=8080, help="port to serve on (default 8080; 0 picks a free one)"),
    Option(
        "--models",
        nargs="+",
        type=Path,
        metavar="FOLDER",
        help="more model folders to offer, beside the bundled and the user models folder",
    ),
    Option(
        "--work",
        type=Path,
        default=DEFAULT_WORK,
        metavar="FOLDER",
        help="where uploads, runs, add-site sets and exports go (default ~/.uharmony/web)",
    ),
    DEVICE,
]


class MissingWebExtra(UHarmonyError):
    """The browser edition's packages are not installed."""

    exit_code = 3


def add_parser(verbs: Verbs) -> None:
    add_command(verbs, "web", "serve the browser edition: segment, inspect the gate, correct, add a site", OPTIONS)


def check_port(host: str, port: int) -> None:
    """Refuse a port that is taken (or an address not on this machine) before the server starts loading Slicer."""
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port}: a port is a number from 0 to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is no clash
        try:
            probe.bind((host, port))
        except socket.gaierror as e:
            raise InputError(f"--host {host}: not an address of this machine ({e.strerror})") from None
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InputError(f"--port {port}: already in use on {host}; choose another port") from None
            raise InputError(f"--host {host} --port {port}: cannot serve there ({e.strerror})") from None


def run_web(args: argparse.Namespace) -> None:
    missing = [folder for folder in args.models or [] if not folder.is_dir()]
    if missing:
        raise InputError(f"--models {missing[0]}: no such folder")
    check_port(args.host, args.port)
    try:
        args.work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--work {args.work}: cannot create the work folder ({e.strerror})") from None
    if args.host not in LOOPBACK:
        sys.stderr.write(
            f"uharmony: warning: serving on {args.host}: the browser edition has no authentication; anyone who "
            "reaches this address can open cases and run models. Put it behind a reverse proxy that authenticates "
            "users (and serves HTTPS).\n"
        )
        sys.stderr.flush()
    try:
        from UHarmonyWeb.app import serve
    except ImportError as e:  # trame-slicer (or its Slicer MRML wheel) is missing
        raise MissingWebExtra(
            f'the browser edition needs {e.name or "trame-slicer"}, which is not installed: pip install "uharmony[web]"'
        ) from None
    serve(args.host, args.port, list(args.models or []), args.work, args.device)
