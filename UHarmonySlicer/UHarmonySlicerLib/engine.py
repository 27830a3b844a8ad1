"""Runs `uharmony` commands in a separate Python process and reads their JSON progress lines.

Slicer's own Python process must never run the network: a long run would freeze the
GUI and a crash would take the scene with it. Each command runs as
`PythonSlicer -m UHarmonyLib VERB ... --progress json`; a thread reads stdout line by
line into a queue, and the caller drains the queue on its own thread (a Qt timer in
the panel, a loop in `Job.wait`), so MRML is only ever touched from the caller's thread.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from UHarmonySlicerLib.errors import EngineError

Event = dict[str, Any]
EventCallback = Callable[[Event], None]
DEVICES = ("auto", "cpu", "cuda", "mps")  # the engine's --device choices (mps: Apple GPUs)


def python_executable() -> str:
    """Slicer's `PythonSlicer` where it is on PATH, else this interpreter (headless use, tests)."""
    return shutil.which("PythonSlicer") or sys.executable


def engine_root() -> Path:
    """The folder holding the UHarmonyLib package (inside the installed module, or the source tree)."""
    spec = importlib.util.find_spec("UHarmonyLib")
    if spec is None or spec.origin is None:
        raise EngineError("the UHarmonyLib engine package is not installed with the module")
    return Path(spec.origin).resolve().parent.parent


def engine_command(verb: str, *args: str | Path) -> list[str]:
    """The full command line of one engine verb, with JSON progress."""
    return [python_executable(), "-m", "UHarmonyLib", verb, *[str(a) for a in args], "--progress", "json"]


def engine_environment(device: str) -> dict[str, str]:
    """This process's environment, with the engine importable and the GPU hidden when the CPU is asked for."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(engine_root()), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONUNBUFFERED"] = "1"
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env


def parse_line(line: str) -> Event:
    """One stdout line as an event; anything that is not a protocol line becomes an `output` event."""
    text = line.rstrip("\r\n")
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        event = None
    if isinstance(event, dict) and isinstance(event.get("event"), str):
        return event
    return {"event": "output", "message": text}


def kill_tree(pid: int, timeout: float = 10.0) -> None:
    """Kill a process and every process it started (a DataLoader worker must not outlive a cancel)."""
    import psutil  # installed with the module's requirements, imported late so the module loads without it

    try:
        root = psutil.Process(pid)
        family = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):  # it may end on its own meanwhile
            proc.kill()
    psutil.wait_procs(family, timeout=timeout)


@dataclass
class Outcome:
    """How an engine process ended."""

    returncode: int | None = None
    result: Event | None = None
    error: str = ""
    output: list[str] = field(default_factory=list)  # non-protocol lines (stderr, warnings), the last 50
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.result is not None and not self.cancelled

    def failure(self) -> str:
        """The engine's own one-line error, or the end of what it printed when it crashed."""
        if self.error:
            return self.error
        tail = " | ".join(line for line in self.output[-3:] if line.strip())
        return f"the engine stopped with exit code {self.returncode}" + (f": {tail}" if tail else "")


class EngineProcess:
    """One engine command running in the background; `drain` delivers its events on the caller's thread."""

    def __init__(self, command: Sequence[str], on_event: EventCallback | None = None, device: str = "auto") -> None:
        self.command = list(command)
        self.on_event = on_event
        self.device = device
        self.outcome = Outcome()
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._ended = False

    def start(self) -> None:
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=engine_environment(self.device),
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),  # no console window on Windows
        )
        self._reader = threading.Thread(target=self._read, name="uharmony-engine-reader", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._queue.put(parse_line(line))
        self._proc.stdout.close()
        self.outcome.returncode = self._proc.wait()
        self._queue.put(None)  # end of stream

    def drain(self) -> bool:
        """Deliver the queued events; True once the process has ended and every event was delivered."""
        while not self._ended:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                return False
            if event is None:
                self._ended = True
                break
            self._record(event)
            if self.on_event is not None and not self.outcome.cancelled:
                self.on_event(event)
        return True

    def _record(self, event: Event) -> None:
        kind = event["event"]
        if kind == "result":
            self.outcome.result = event
        elif kind == "error":
            self.outcome.error = str(event.get("message", ""))
        elif kind == "output":
            self.outcome.output = [*self.outcome.output[-49:], str(event["message"])]

    def cancel(self) -> None:
        """Kill the process tree and wait until its output is closed."""
        self.outcome.cancelled = True
        if self._proc is not None and self._proc.poll() is None:
            kill_tree(self._proc.pid)
        if self._reader is not None:
            self._reader.join(timeout=10)
        self.drain()


Steps = Generator[list[str], Outcome, Any]


class Job:
    """A piece of work that runs engine commands one after another in its own temporary folder.

    `steps(temp_folder)` is a generator: it yields a command line, receives the
    successful `Outcome` (or has `EngineError` raised at the yield when the command
    failed), and returns the job's result. Everything it does to the scene happens
    between yields, on the caller's thread, so a cancelled job leaves the scene as it
    was. The same driver serves the panel (`start`, then `poll` from a timer) and
    scripts and tests (`run`, blocking).
    """

    def __init__(
        self, steps: Callable[[Path], Steps], on_event: EventCallback | None = None, device: str = "auto"
    ) -> None:
        if device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
        self._steps = steps
        self.on_event = on_event
        self.device = device
        self.result: Any = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.done = False
        self.process: EngineProcess | None = None
        self.temp: Path | None = None  # the job's temporary folder, removed when it is done
        self._gen: Steps | None = None

    def start(self) -> Job:
        self.temp = Path(tempfile.mkdtemp(prefix="uharmony-"))
        self._gen = self._steps(self.temp)
        self._advance(next)
        return self

    def _advance(self, step: Callable[[Steps], list[str]]) -> None:
        assert self._gen is not None
        try:
            command = step(self._gen)
        except StopIteration as stop:
            self.result = stop.value
            self._finish()
        except Exception as e:  # the job's own failure: reported through `error`, the panel stays usable
            self.error = e
            self._finish()
        else:
            self.process = EngineProcess(command, self.on_event, self.device)
            try:
                self.process.start()
            except OSError as e:  # no Python to run the engine with
                self.error = EngineError(f"cannot start the engine ({command[0]}): {e}")
                self._finish()

    def poll(self) -> bool:
        """Deliver pending events and move on when a command has ended; True once the job is done."""
        if self.done or self.process is None or not self.process.drain():
            return self.done
        outcome = self.process.outcome
        if self.cancelled:
            self._finish()
        elif outcome.ok:
            self._advance(lambda gen: gen.send(outcome))
        else:
            failure = EngineError(outcome.failure())
            self._advance(lambda gen: gen.throw(failure))
        return self.done

    def run(self, timeout: float | None = None, interval: float = 0.02) -> Any:
        """Start (if needed) and block until done; returns the result, raises the job's error."""
        if self._gen is None:
            self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"engine job did not finish within {timeout} s")
            time.sleep(interval)
        if self.error is not None:
            raise self.error
        return self.result

    def cancel(self) -> None:
        """Stop the running command (its whole process tree) and drop the job's remaining steps."""
        if self.done:
            return
        self.cancelled = True
        if self.process is not None:
            self.process.cancel()
        self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self._gen is not None:
            self._gen.close()
        if self.temp is not None:
            shutil.rmtree(self.temp, ignore_errors=True)
