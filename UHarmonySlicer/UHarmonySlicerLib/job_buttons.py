"""The panel's job buttons (Apply, Train new site, Segment all cases) as a small state machine.

It lives apart from the widget so its rules are tested with real Qt buttons from the
real .ui (PySide6 here, PythonQt in Slicer: both have setText and setEnabled) and small
fake jobs. One job runs at a time: its button reads Cancel and is the only one enabled.
Starting checks the inputs first (the job factory raises InputRefused) and only then the
dependencies, so a refused input never leads to an install prompt. When a job ends, the
buttons come back and exactly one of done, cancelled or failed is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from UHarmonySlicerLib.errors import InputRefused


@dataclass
class _Running:
    job: Any  # start(), poll() -> bool, cancel(), and then cancelled, error, result
    button: Any
    on_done: Callable[[Any], None]
    on_cancel: Callable[[], None] | None


class JobButtons:
    """Enables the buttons from their readiness while idle, and runs one job from one of them."""

    def __init__(
        self,
        buttons: Sequence[tuple[Any, str]],
        cancel_text: str,
        ensure_dependencies: Callable[[], bool],
        show_error: Callable[[str], None],
        log: Callable[[str], None],
        cancelled_message: str,
    ) -> None:
        self.buttons = list(buttons)
        self.cancel_text = cancel_text
        self.ensure_dependencies = ensure_dependencies
        self.show_error = show_error
        self.log = log
        self.cancelled_message = cancelled_message
        self._ready = [False] * len(self.buttons)
        self._running: _Running | None = None

    @property
    def running(self) -> bool:
        return self._running is not None

    def update(self, ready: Sequence[bool] | None = None) -> None:
        """Idle: each button enabled when it can run; running: only the job's own button, reading Cancel."""
        if ready is not None:
            self._ready = list(ready)
        for (button, text), can_run in zip(self.buttons, self._ready):
            if self._running is None:
                button.setText(text)
                button.setEnabled(bool(can_run))
            else:
                own = button is self._running.button
                button.setText(self.cancel_text if own else text)
                button.setEnabled(own)

    def start(
        self,
        button: Any,
        make_job: Callable[[], Any],
        on_done: Callable[[Any], None],
        on_cancel: Callable[[], None] | None = None,
    ) -> bool:
        """Make the job (a refusal is shown in one line), check dependencies, start it; False if it did not start."""
        if self._running is not None:
            return False
        try:
            job = make_job()
        except InputRefused as e:
            self.show_error(str(e))
            return False
        if not self.ensure_dependencies():
            if on_cancel is not None:
                on_cancel()  # what make_job put in the scene (the add-site curve) goes again
            return False
        self._running = _Running(job, button, on_done, on_cancel)
        self.update()
        job.start()
        return True

    def poll(self) -> bool:
        """Called from the panel's timer; True once no job is running (its end has been reported)."""
        if self._running is None:
            return True
        if not self._running.job.poll():
            return False
        ended, self._running = self._running, None
        self.update()
        job = ended.job
        if job.cancelled:
            if ended.on_cancel is not None:
                ended.on_cancel()
            self.log(self.cancelled_message)
        elif job.error is not None:
            self.log(str(job.error))
            self.show_error(str(job.error))
        else:
            ended.on_done(job.result)
        return True

    def cancel(self) -> None:
        """Cancel the running job (its process tree is killed) and report it."""
        if self._running is not None:
            self._running.job.cancel()
            self.poll()
