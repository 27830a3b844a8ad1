"""benchmarks/adapt_or_harmonize.py --quick: both scenarios, four trainings each, a verdict, and its Markdown form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, is_fraction, results_renderer

CONFIGS = ["plain", "harmonized", "uharmony", "both"]
RECOMMENDATIONS = {"neither needed", "harmonize data", "personalize the model", "both"}


@pytest.mark.slow  # a benchmark --quick run
def test_quick_run_writes_both_scenarios_and_renders_them(tmp_path: Path) -> None:
    out = tmp_path / "adapt_or_harmonize.json"
    command = ["benchmarks/adapt_or_harmonize.py", "--quick", "--out", str(out), "--work", str(tmp_path / "work")]
    proc = subprocess.run(
        [sys.executable, *command],
        cwd=REPO, capture_output=True, encoding="utf-8", timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert set(doc["scenarios"]) == {"appearance", "structural"} and doc["method"] == "nyul"
    for name, scenario in doc["scenarios"].items():
        rows = scenario["rows"]
        assert [r["config"] for r in rows] == CONFIGS, name
        assert [(r["norm"], r["harmonize"]) for r in rows] == [
            ("instance", None), ("instance", "nyul"), ("uharmony", None), ("uharmony", "nyul"),
        ]  # fmt: skip
        for r in rows:
            assert all(is_fraction(v) for v in [r["dice_mean"], r["dice_std"], *r["per_site"].values()]), r
            assert set(r["per_site"]) == set(scenario["sites"]) and len(r["per_site"]) == 4
        assert scenario["winner"] in CONFIGS and isinstance(scenario["matches"], bool)
        assert scenario["recommendation"] in RECOMMENDATIONS
    assert doc["command"].startswith("python benchmarks/adapt_or_harmonize.py --quick") and doc["seconds"] > 0
    assert doc["settings"]["torch_threads"] == 1 and doc["settings"]["seeds"] == [0]

    markdown = "\n".join(results_renderer("adapt_or_harmonize.json")(doc))
    assert "| config | norm | harmonize |" in markdown and "### appearance" in markdown and "### structural" in markdown
    assert all(f"`{c}`" in markdown for c in CONFIGS) and "Winner:" in markdown and "Command:" in markdown
