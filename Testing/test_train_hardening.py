"""SIGTERM stops `train` like Ctrl-C (checkpoint of the step reached, one line) and `add-site` cleanly;
`train --resume` continues the recorded run and refuses what it cannot continue.

Real child processes (`python -m UHarmonyLib`) get real signals; tiny DynUNets on a
synthetic dataset at 4 mm, one thread.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, assert_one_line_error, run_main

from UHarmonyLib.training import TrainConfig, train
from UHarmonyLib.training.checkpoint import checkpoints

SPEC = {
    "name": "easy",
    "sites": [{"name": "solo", "channels": ["FLAIR"], "lesions": {"count": [2, 2], "radius_mm": [8, 10]}}],
}
TINY_ARGS = ["--patch", "32", "--filters", "4", "8", "16"]
STEPS, EVERY = 60, 20  # a checkpoint every 20 steps; the signal comes between two of them


@pytest.fixture(scope="module")
def easy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One FLAIR site, 4 cases (one held out)."""
    folder = tmp_path_factory.mktemp("easy")
    (folder / "spec.json").write_text(json.dumps(SPEC), encoding="utf-8")
    run = run_main("synth", "--scenario", folder / "spec.json", "--out", folder / "data", "--spacing", 4,
                   "--cases-per-site", 4)  # fmt: skip
    assert run.code == 0, run
    return folder / "data"


@dataclass
class Stopped:
    """A child process stopped by SIGTERM: exit code, stderr, the last step it reported."""

    code: int
    stderr: str
    last_step: int


def _child(*args: Any) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "UHARMONY_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "UHarmonyLib", *map(str, args), "--progress", "json"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _terminate_after(proc: subprocess.Popen[str], stage: str, step: int) -> Stopped:
    """Read the child's JSON events until `stage` reaches `step`, send SIGTERM, wait for the exit."""
    assert proc.stdout is not None
    deadline = time.monotonic() + 240
    done = 0
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "progress" and event["stage"] == stage:
            done = event["done"]
            if done >= step:
                proc.send_signal(signal.SIGTERM)
                break
        assert time.monotonic() < deadline, "the child never got there"
    else:
        pytest.fail(
            f"the child ended before {stage} step {step}: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}"
        )
    _, stderr = proc.communicate(timeout=120)
    return Stopped(proc.returncode, stderr, done)


def _interrupted_train(data: Path, out: Path) -> Stopped:
    """`train` with a checkpoint every 20 steps, sent SIGTERM at step 25 or later."""
    proc = _child("train", "--data", data, "--out", out, "--steps", STEPS, "--checkpoint-every", EVERY,
                  "--val-every", 30, *TINY_ARGS)  # fmt: skip
    return _terminate_after(proc, "train", EVERY + 5)


@pytest.fixture(scope="module")
def interrupted(easy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The --out of a train run stopped by SIGTERM (its checkpoint is in OUT.work)."""
    out = tmp_path_factory.mktemp("interrupted") / "model"
    assert _interrupted_train(easy, out).code == 130
    return out


@pytest.mark.slow  # two real training processes
def test_sigterm_saves_the_step_reached_and_resume_continues_from_it(easy: Path, tmp_path: Path) -> None:
    """SIGTERM: exit 130, one line naming the step and checkpoint; --resume alone continues from that step."""
    out, work = tmp_path / "model-v1", tmp_path / "model-v1.work"
    stopped = _interrupted_train(easy, out)
    assert stopped.code == 130, stopped.stderr
    lines = stopped.stderr.splitlines()
    assert len(lines) == 1, lines
    saved = [int(p.name.split("-")[1]) for p in checkpoints(work)]
    assert len(saved) == 1 and saved[0] > EVERY and saved[0] >= stopped.last_step, (saved, stopped)
    assert lines[0] == (
        f"uharmony: error: interrupted at step {saved[0]} of {STEPS}; saved a checkpoint in {work}: "
        "continue with --resume"
    )
    assert not out.exists()

    # only --data, --out and --resume: the steps, patch, filters and checkpoint cadence come from the record
    resumed = run_main("train", "--data", easy, "--out", out, "--resume", "--progress", "json")
    assert resumed.code == 0, resumed.stderr
    events = [json.loads(line) for line in resumed.stdout.splitlines()]
    logs = "\n".join(e["message"] for e in events if e["event"] == "log")
    assert f"resumed from step {saved[0]} of {STEPS}" in logs
    steps = [e["done"] for e in events if e["event"] == "progress" and e["stage"] == "train"]
    assert steps == list(range(saved[0] + 1, STEPS + 1))
    card = json.loads((out / "model.json").read_text(encoding="utf-8"))
    assert card["architecture"]["filters"] == [4, 8, 16] and card["inference"]["patch_size"] == [32, 32, 32]
    assert card["provenance"]["resumed_from"] == [saved[0]] and card["provenance"]["steps"] == STEPS
    assert not work.exists()


@pytest.mark.bad_input("train --resume", words="words")
@pytest.mark.parametrize(
    ("out_name", "extra", "words"),
    [
        pytest.param("modle", [], "nothing to resume (no checkpoint in", id="--resume with a mistyped --out"),
        pytest.param(
            "model", ["--steps", "80"], f"--steps 80: the run in {{work}} was started with --steps {STEPS};",
            id="--resume with another --steps",
        ),
        pytest.param(
            "model", ["--patch", "64"], "--patch 64 64 64: the run in {work} was started with --patch 32 32 32;",
            id="--resume with another --patch",
        ),
        pytest.param(
            "model", ["--epochs", "2"], "--epochs 2: the run in {work} was started with no --epochs;",
            id="--resume with --epochs where the run gave --steps",
        ),
        pytest.param(
            "model", ["--seed", "0", "--lr", "0.01"], "--lr 0.01: the run in {work} was started with --lr 0.002;",
            id="--resume with the same --seed but another --lr",
        ),
    ],
)  # fmt: skip
def test_resume_that_cannot_continue_the_run_is_refused(
    interrupted: Path, easy: Path, out_name: str, extra: list[str], words: str
) -> None:
    """Refused in one line (exit 2) naming the option, the run's value and the given one; the checkpoint is kept."""
    out = interrupted.with_name(out_name)
    work = interrupted.with_name(interrupted.name + ".work")
    before = {p.name: (p / "state.json").read_bytes() for p in checkpoints(work)}
    run = run_main("train", "--data", easy, "--out", out, "--resume", *extra)
    assert run.code == 2 and words.format(work=work) in assert_one_line_error(run)
    assert {p.name: (p / "state.json").read_bytes() for p in checkpoints(work)} == before and before
    assert not out.exists() and not interrupted.exists()


@pytest.mark.slow  # a real add-site process
def test_sigterm_during_add_site_leaves_nothing_behind(easy: Path, tmp_path: Path) -> None:
    """SIGTERM during add-site: exit 130, one line, no new bundle and no half-written folder."""
    parent = train(TrainConfig(data=[easy], out=tmp_path / "parent-v1", steps=2, val_fraction=0.0,
                               patch=(32, 32, 32), filters=(4, 8, 16)))  # fmt: skip
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = _child("add-site", "--model", parent, "--data", easy, "--site", "clinic", "--out",
                  tmp_path / "parent-v2", "--steps", 5000)  # fmt: skip
    stopped = _terminate_after(proc, "add-site", 3)
    assert stopped.code == 130, stopped.stderr
    assert stopped.stderr.splitlines() == ["uharmony: error: interrupted"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
