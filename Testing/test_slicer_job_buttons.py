"""The panel's Apply/Cancel state machine (UHarmonySlicerLib.job_buttons) on the real .ui's buttons.

The .ui is loaded by Qt's own loader (PySide6, offscreen), as in test_slicer_ui.py; the
jobs are small fakes with the engine Job's interface (start, poll, cancel, cancelled,
error, result), since a real engine run is covered by test_slicer_logic.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from slicer_helpers import MODULE_DIR

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported: no display here

from PySide6 import QtWidgets
from PySide6.QtCore import QFile
from PySide6.QtUiTools import QUiLoader
from UHarmonySlicerLib.errors import InputRefused
from UHarmonySlicerLib.job_buttons import JobButtons

UI_FILE = MODULE_DIR / "Resources" / "UI" / "UHarmonySlicer.ui"
NAMES = {"applyButton": "Apply", "addSiteButton": "Train new site", "cohortRunButton": "Segment all cases"}


@dataclass
class FakeJob:
    result: Any = "segmentation"
    error: Exception | None = None
    started: bool = False
    cancelled: bool = False
    finished: bool = False

    def start(self) -> None:
        self.started = True

    def poll(self) -> bool:
        return self.finished

    def cancel(self) -> None:
        self.cancelled = self.finished = True


@dataclass
class Panel:
    """The real buttons, a JobButtons over them, and what it reported."""

    buttons: dict[str, QtWidgets.QPushButton]
    installed: bool = True
    events: list[str] = field(default_factory=list)
    jobs: JobButtons = field(init=False)

    def __post_init__(self) -> None:
        self.jobs = JobButtons(
            [(self.buttons[name], text) for name, text in NAMES.items()],
            cancel_text="Cancel",
            ensure_dependencies=self.ensure,
            show_error=lambda message: self.events.append(f"error: {message}"),
            log=lambda message: self.events.append(f"log: {message}"),
            cancelled_message="Cancelled; the scene was left as it was.",
        )

    def ensure(self) -> bool:
        self.events.append("dependencies checked")
        return self.installed

    def state(self) -> dict[str, tuple[str, bool]]:
        return {name: (b.text(), b.isEnabled()) for name, b in self.buttons.items()}


@pytest.fixture
def panel() -> Iterator[Panel]:
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    ui = QFile(str(UI_FILE))
    assert ui.open(QFile.ReadOnly)
    widget = QUiLoader().load(ui)
    ui.close()
    yield Panel({name: widget.findChild(QtWidgets.QPushButton, name) for name in NAMES})
    widget.deleteLater()
    app.processEvents()


def test_idle_buttons_follow_what_can_run(panel: Panel) -> None:
    panel.jobs.update([True, False, True])
    assert panel.state() == {"applyButton": ("Apply", True), "addSiteButton": ("Train new site", False),
                             "cohortRunButton": ("Segment all cases", True)}  # fmt: skip


def test_a_running_job_turns_its_button_into_cancel_and_the_rest_wait(panel: Panel) -> None:
    panel.jobs.update([True, True, True])
    job, done = FakeJob(), []
    assert panel.jobs.start(panel.buttons["applyButton"], lambda: job, done.append)
    assert job.started and panel.jobs.running
    assert panel.state() == {"applyButton": ("Cancel", True), "addSiteButton": ("Train new site", False),
                             "cohortRunButton": ("Segment all cases", False)}  # fmt: skip
    assert not panel.jobs.poll() and not panel.jobs.start(panel.buttons["cohortRunButton"], FakeJob, done.append)
    job.finished = True
    assert panel.jobs.poll() and done == ["segmentation"] and not panel.jobs.running
    assert all(enabled for _, enabled in panel.state().values()) and panel.buttons["applyButton"].text() == "Apply"


def test_a_refused_input_is_shown_before_any_dependency_check(panel: Panel) -> None:
    def refuse() -> FakeJob:
        raise InputRefused("The model expects 4 volumes, got 2.")

    panel.jobs.update([True, True, True])
    assert not panel.jobs.start(panel.buttons["applyButton"], refuse, lambda _r: None)
    assert panel.events == ["error: The model expects 4 volumes, got 2."]  # no install prompt for a bad input
    assert not panel.jobs.running and panel.state()["applyButton"] == ("Apply", True)


def test_missing_dependencies_start_nothing_and_undo_what_the_factory_added(panel: Panel) -> None:
    panel.installed = False
    job, undone = FakeJob(), []
    assert not panel.jobs.start(panel.buttons["addSiteButton"], lambda: job, lambda _r: None, lambda: undone.append(1))
    assert panel.events == ["dependencies checked"] and undone == [1] and not job.started


def test_cancel_reports_once_and_restores_the_buttons(panel: Panel) -> None:
    panel.jobs.update([True, True, True])
    job, done, undone = FakeJob(), [], []
    panel.jobs.start(panel.buttons["addSiteButton"], lambda: job, done.append, lambda: undone.append("curve"))
    panel.jobs.cancel()
    assert job.cancelled and undone == ["curve"] and done == []
    assert panel.events[-1] == "log: Cancelled; the scene was left as it was."
    assert panel.state()["addSiteButton"] == ("Train new site", True) and not panel.jobs.running


def test_a_failed_job_is_logged_and_shown(panel: Panel) -> None:
    panel.jobs.update([True, True, True])
    job, done = FakeJob(error=RuntimeError("engine: cannot read image")), []
    panel.jobs.start(panel.buttons["cohortRunButton"], lambda: job, done.append)
    job.finished = True
    assert panel.jobs.poll() and done == []
    assert panel.events[-2:] == ["log: engine: cannot read image", "error: engine: cannot read image"]
