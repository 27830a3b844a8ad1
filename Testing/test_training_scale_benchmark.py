"""benchmarks/training_scale.py --quick writes the issue's JSON: a row per size, data mode and worker count, with
measured peak memory and speed, and the growth and speed ratios derived from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


@pytest.mark.slow  # a benchmark --quick run: 8 short training processes
def test_quick_run_writes_a_row_per_size_mode_and_worker_count(tmp_path: Path) -> None:
    out = tmp_path / "training_scale.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(REPO / "benchmarks" / "training_scale.py")
    run = subprocess.run([sys.executable, script, "--quick", "--work", str(tmp_path / "work"), "--out", str(out)],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr
    doc = json.loads(out.read_text(encoding="utf-8"))
    rows = doc["rows"]
    assert [(r["cases"], r["mode"], r["workers"]) for r in rows] == [
        (cases, mode, workers) for cases in (4, 8) for mode in ("memory", "stream") for workers in (0, 1)
    ]
    for row in rows:
        assert row["steps_per_second"] > 0 and row["peak_rss_mb"] > 100
        assert (row["worker_peak_rss_mb"] > 0) == (row["workers"] > 0)  # only worker processes are children
    assert doc["rss_growth_16_to_256"] is None  # sizes 16 and 256 are the full run's
    peaks = {(r["cases"], r["mode"]): r["peak_rss_mb"] for r in rows if r["workers"] == 0}
    assert doc["rss_growth"]["stream"] == pytest.approx(peaks[8, "stream"] / peaks[4, "stream"] - 1, abs=1e-3)
    assert [(s["cases"], s["workers"]) for s in doc["speed_vs_memory"]] == [(4, 0), (4, 1), (8, 0), (8, 1)]
    assert all(s["ratio"] > 0 for s in doc["speed_vs_memory"])
    assert (tmp_path / "work" / "mixed-8-4mm" / "dataset.json").is_file()  # kept for the next run
