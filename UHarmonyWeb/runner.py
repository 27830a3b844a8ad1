"""Engine jobs for the page: one at a time, polled on trame's asyncio loop, with progress and cancel.

The rules are the desktop panel's (UHarmonySlicerLib.job_buttons.JobButtons): a refused input is
shown in one line, the running job's button reads Cancel and is the only one enabled, and each run
ends as done, cancelled or failed. Here a "button" is two state entries the page renders. Polling on
the server's own loop keeps every MRML change on the thread that serves the views.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from trame_server.state import State
from trame_server.utils.asynchronous import create_task
from UHarmonySlicerLib.engine import Event, Job
from UHarmonySlicerLib.job_buttons import JobButtons

POLL_SECONDS = 0.1
LOG_LINES = 200  # the newest engine lines the page keeps


class StateButton:
    """A JobButtons button whose text and enabled flag live in the state (`<key>_text`, `<key>_enabled`)."""

    def __init__(self, state: State, key: str) -> None:
        self.state = state
        self.key = key

    def setText(self, text: str) -> None:
        self.state[f"{self.key}_text"] = text

    def setEnabled(self, enabled: bool) -> None:
        self.state[f"{self.key}_enabled"] = bool(enabled)


class JobRunner:
    """Starts, polls and cancels the page's engine jobs; progress goes to `<key>_done/_total/_stage`."""

    def __init__(self, state: State, buttons: Sequence[tuple[str, str]], show_error: Callable[[str], None]) -> None:
        self.state = state
        self.buttons = {key: StateButton(state, key) for key, _ in buttons}
        self.state.setdefault("uh_log", [])
        self.jobs = JobButtons(
            [(self.buttons[key], text) for key, text in buttons],
            cancel_text="Cancel",
            ensure_dependencies=lambda: True,  # the server's engine is installed with it
            show_error=show_error,
            log=self.log,
            cancelled_message="Cancelled: nothing was changed.",
        )
        self.jobs.update([False] * len(buttons))
        for key in self.buttons:
            self.reset_progress(key)

    @property
    def running(self) -> bool:
        return self.jobs.running

    def update(self, ready: Sequence[bool]) -> None:
        """Which buttons can start a job now (in the order given at construction)."""
        self.jobs.update(ready)

    def press(
        self,
        key: str,
        make_job: Callable[[], Job],
        on_done: Callable[[Any], None],
        on_cancel: Callable[[], None] | None = None,
    ) -> bool:
        """The button `key` was pressed: cancel its running job, else start a new one; True if one started."""
        if self.jobs.running:
            self.cancel()
            return False
        self.reset_progress(key)
        if not self.jobs.start(self.buttons[key], make_job, on_done, on_cancel):
            return False
        create_task(self._poll())
        return True

    def cancel(self) -> None:
        """Stop the running job's engine process tree (the job leaves the scene as it was)."""
        self.jobs.cancel()

    async def _poll(self) -> None:
        while True:
            with self.state:
                if self.jobs.poll():
                    return
            await asyncio.sleep(POLL_SECONDS)

    def reset_progress(self, key: str) -> None:
        self.state[f"{key}_done"] = 0
        self.state[f"{key}_total"] = 0
        self.state[f"{key}_stage"] = ""

    def progress(self, key: str) -> Callable[[Event], None]:
        """An engine event callback that shows `progress` events on `key`'s bar and log lines in the log."""

        def on_event(event: Event) -> None:
            if event["event"] == "progress":
                self.state[f"{key}_done"] = int(event["done"])
                self.state[f"{key}_total"] = max(int(event["total"]), 1)
                self.state[f"{key}_stage"] = str(event["stage"])
            elif event["event"] in ("log", "output"):
                self.log(str(event.get("message", "")))

        return on_event

    def log(self, message: str) -> None:
        if message.strip():
            self.state["uh_log"] = [*self.state["uh_log"][-(LOG_LINES - 1) :], message]
