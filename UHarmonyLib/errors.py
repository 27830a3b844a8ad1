"""Errors that reach the user as one line and an exit code."""

from __future__ import annotations


class UHarmonyError(Exception):
    """A problem the user can act on; its message is printed as one line."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class InputError(UHarmonyError):
    """A bad input file, path or argument."""

    exit_code = 2


class BundleError(UHarmonyError):
    """A model bundle that cannot be trusted or read."""

    exit_code = 3
