"""benchmarks/adapt_or_harmonize.py --quick: both scenarios, four trainings each, a verdict, the protocol's seeds,
per-case scores and comparisons, and its Markdown form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, is_fraction, results_renderer

from UHarmonyLib.evaluation.scoring import WHOLE

CONFIGS = ["plain", "harmonized", "uharmony", "both"]
PROTOCOL = json.loads((REPO / "benchmarks" / "protocol.json").read_text(encoding="utf-8"))
METRICS = ("dice", "hd95_mm", "lesion_dice")
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
    assert doc["settings"]["torch_threads"] == 1 and doc["settings"]["replicates"] == 1

    # the protocol's seeds: replicate 0's training seed, one development seed per scenario; never a test seed
    assert doc["evaluation"] == "development" and doc["protocol"] == PROTOCOL
    train, development = PROTOCOL["training_seeds"][:1], PROTOCOL["development_seeds"]
    assert doc["settings"]["data_seeds"] == {
        "train": train, "test": {"appearance": development[0], "structural": development[1]},
    }  # fmt: skip
    assert all(r["seeds"] == train for s in doc["scenarios"].values() for r in s["rows"])

    # one record per scored case: 2 scenarios x 4 configurations x 4 sites x 1 test case
    cases = json.loads((tmp_path / doc["case_scores"]).read_text(encoding="utf-8"))
    assert doc["case_scores"] == "adapt_or_harmonize.cases.json" and cases["evaluation"] == "development"
    records = cases["cases"]
    assert len(records) == 32
    for arm in {f"{s}/{c}" for s in doc["scenarios"] for c in CONFIGS}:
        scored = [r for r in records if r["arm"] == arm]
        sites = doc["scenarios"][arm.split("/")[0]]["sites"]
        assert sorted(r["site"] for r in scored) == sorted(sites) and len({r["case"] for r in scored}) == 4, arm
    for r in records:
        assert all(WHOLE in r[m] for m in METRICS) and is_fraction(r["dice"][WHOLE]), r
        assert r["replicate"] == 0 and r["site_mode"] == "auto", r

    # every other configuration against plain, per scenario, with its interval around the mean difference
    names = [f"{s}: {c} - plain" for s in ("appearance", "structural") for c in CONFIGS[1:]]
    assert [c["name"] for c in doc["comparisons"]] == names
    for c in doc["comparisons"]:
        low, high = c["ci95"]
        assert low <= c["diff_mean"] <= high and isinstance(c["holds"], bool), c
        assert c["replicates"] == 1 and c["cases"] == 4 and c["metric"] == f"dice {WHOLE}"

    markdown = "\n".join(results_renderer("adapt_or_harmonize.json")(doc))
    assert "| config | norm | harmonize |" in markdown and "### appearance" in markdown and "### structural" in markdown
    assert all(f"`{c}`" in markdown for c in CONFIGS) and "Winner:" in markdown and "Command:" in markdown


def test_quick_never_scores_on_test_seeds(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/adapt_or_harmonize.py", "--quick", "--final", "--out", str(tmp_path / "a.json")],
        cwd=REPO, capture_output=True, encoding="utf-8", timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "--quick never uses the test seeds" in proc.stderr
    assert not any(tmp_path.iterdir())
