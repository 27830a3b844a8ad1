"""The progress protocol: JSON lines for programs (Slicer), a progress bar for people.

With `--progress json` every stdout line is one JSON object with an "event" key:
`progress` (stage, done, total), `log` (message, level), `result` (payload) or `error`
(message). Slicer and the tests read exactly these lines.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


class Reporter:
    """Human-readable progress on stderr; results are printed by the caller."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._last = 0.0
        self._bar_open = False  # a bar line without its newline yet

    def progress(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < 0.2:
            return
        self._last = now
        width = 30
        filled = int(width * done / max(total, 1))
        end = "\n" if done >= total else ""
        self.stream.write(f"\r{stage:>10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{end}")
        self.stream.flush()
        self._bar_open = not end

    def log(self, message: str, level: str = "info") -> None:
        prefix = "" if level == "info" else f"{level}: "
        self.stream.write(("\n" if self._bar_open else "") + f"{prefix}{message}\n")
        self._bar_open = False
        self.stream.flush()

    def result(self, payload: dict[str, Any]) -> None:
        """Human mode: the caller prints its own summary."""

    def error(self, message: str) -> None:
        self.stream.write(f"uharmony: error: {message}\n")
        self.stream.flush()


class JsonReporter(Reporter):
    """One JSON object per stdout line."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream or sys.stdout)

    def _emit(self, event: str, **fields: Any) -> None:
        self.stream.write(json.dumps({"event": event, **fields}) + "\n")
        self.stream.flush()

    def progress(self, stage: str, done: int, total: int) -> None:
        self._emit("progress", stage=stage, done=done, total=total)

    def log(self, message: str, level: str = "info") -> None:
        self._emit("log", level=level, message=message)

    def result(self, payload: dict[str, Any]) -> None:
        self._emit("result", **payload)

    def error(self, message: str) -> None:
        self._emit("error", message=message)


class SilentReporter(Reporter):
    """For library calls and benchmarks: no output."""

    def progress(self, stage: str, done: int, total: int) -> None:
        pass

    def log(self, message: str, level: str = "info") -> None:
        pass

    def error(self, message: str) -> None:
        pass


def make_reporter(mode: str | None) -> Reporter:
    return JsonReporter() if mode == "json" else Reporter()
