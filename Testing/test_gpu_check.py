"""benchmarks/gpu_check.py: its CPU --quick run writes every figure a GPU run writes, and RESULTS.md renders them;
asked for CUDA where there is none, it says so in one line and exits 2, writing nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, is_fraction, results_renderer

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check


@pytest.mark.slow  # a benchmark --quick run: synthetic data, two short trainings, four segmentations of the sample
def test_cpu_quick_run_writes_the_figures_and_they_render(tmp_path: Path) -> None:
    out = tmp_path / "results" / "gpu_check.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["complete"] and doc["checks"] and all(doc["checks"].values()), doc["checks"]
    assert {"device_name", "torch", "cuda", "python"} <= set(doc["machine"]) and doc["device"]
    training = doc["training"]
    assert training["patch"] == [32, 32, 32] and training["batch_size"] == 2 and training["batch_seconds"] > 0
    rows = training["rows"]
    assert [(r["layout"], r["compile"]) for r in rows] == [("contiguous", False), ("channels_last_3d", False)]
    for row in rows:
        assert row["steps"] == len(row["losses"]) == 3 and row["first_step_seconds"] > 0 and row["step_seconds"] > 0
        assert row["precision"] in ("float32", "bfloat16") and row["peak_gpu_memory_gib"] is None
    assert rows[1]["losses"][0] == pytest.approx(rows[0]["losses"][0], rel=gpu_check.LOSS_TOLERANCE)
    segmentation = doc["segmentation"]
    assert segmentation["float32"]["precision"] == "float32" and segmentation["default"]["device"] == "cpu"
    assert segmentation["float32"]["seconds"] > 0 and segmentation["agreement_dice"]["whole lesion"] >= 0.99
    assert is_fraction(segmentation["default"]["dice_vs_reference"]["whole lesion"])
    text = "\n".join(results_renderer("gpu_check.json")(doc))
    assert "| channels_last_3d | no |" in text and "Checks: training_losses_finite yes" in text


def test_cuda_asked_for_where_there_is_none_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Run with CUDA hidden, so the check holds on a GPU machine too."""
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(out)],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)  # fmt: skip
    lines = run.stderr.splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert lines[0].startswith("gpu_check: --device cuda: no CUDA device here"), lines
    assert not out.exists()
