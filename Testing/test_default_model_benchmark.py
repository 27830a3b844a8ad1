"""benchmarks/default_model.py writes the issue's figures for any bundle (here a tiny one, 4 mm)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_main

from UHarmonyLib.training import TrainConfig, train

KEYS = (
    "dice_whole_lesion_seen",
    "dice_whole_lesion_unseen",
    "gate_accuracy_seen",
    "entropy_seen_mean",
    "entropy_unseen_mean",
    "demo_seconds",
)


@pytest.mark.slow  # a benchmark --quick run
def test_figures_script_writes_every_key(tmp_path: Path) -> None:
    run = run_main("synth", "--scenario", "mixed", "--out", tmp_path / "data", "--spacing", 4, "--cases-per-site", 2)
    assert run.code == 0, run
    model = train(
        TrainConfig(data=[tmp_path / "data"], out=tmp_path / "m-v1", steps=3, patch=(32,), filters=(4, 8, 16))
    )
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/default_model.py", "--train-data", str(tmp_path / "data" / "dataset.json"),
         "--model", str(model), "--cases-per-site", "1", "--spacing", "4", "--skip-demo", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert all(k in figures for k in KEYS) and figures["demo_seconds"] is None
    assert set(figures["dice_whole_lesion_seen"]) == {"hospital-a", "hospital-b", "hospital-c", "hospital-d"}
    assert set(figures["dice_whole_lesion_unseen"]) == {"unseen-lowfield", "unseen-inverted-gain"}
    dice = [*figures["dice_whole_lesion_seen"].values(), *figures["dice_whole_lesion_unseen"].values()]
    assert all(0.0 <= d <= 1.0 for d in dice)
    assert len(figures["cases"]) == 6 and all(c["distance"] is not None for c in figures["cases"])
    assert 0.0 <= figures["gate_accuracy_seen"] <= 1.0 and math.isfinite(figures["distance_unseen_mean"])
