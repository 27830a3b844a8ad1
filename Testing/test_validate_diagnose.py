"""scripts/validate_diagnose.py across sessions: finished datasets are kept in a store and reused, never retrained,
and a store of other settings is refused. (The regret run itself takes hours: docs/harmonization.md.)"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from conftest import REPO, results_renderer

SCRIPT = REPO / "scripts" / "validate_diagnose.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("validate_diagnose", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(name: str, scenario: str, seed: int, k: int) -> dict[str, Any]:
    """A finished dataset's record as run_dataset writes it; the truth differs per dataset so sums are checkable."""
    truth = {"plain": 0.5, "harmonized": 0.45, "uharmony": 0.5 + 0.01 * k, "both": 0.4}
    advised = "uharmony" if k % 2 else "plain"
    regret = max(truth.values()) - truth[advised]
    return {
        "name": name,
        "scenario": scenario,
        "seed": seed,
        "truth": truth,
        "truth_per_seed": {s: [d, d] for s, d in truth.items()},
        "best": max(truth, key=lambda s: truth[s]),
        "advice": "inconclusive at this budget",
        "advised_strategy": advised,
        "reason": "stored",
        "comparisons": [],
        "regret": round(regret, 4),
        "correct": regret <= 0.01,
        "leaning": "uharmony",
        "regret_leaning": 0.0,
        "learning": None,
        "trial_steps": 1000,
        "seconds": 100.0 + k,
    }


def test_a_stored_dataset_is_reused_and_other_settings_are_refused(tmp_path: Path) -> None:
    vd = _script()
    store = tmp_path / "store"
    stored = [_result(n, sc, seed, k) for k, (n, sc, seed) in enumerate(vd.DATASETS)]
    for r in stored:
        vd.replicate_store.save(store, r["name"], vd.key(r["scenario"], r["seed"], 1000, 2), r)

    out, work = tmp_path / "diagnose.json", tmp_path / "work"
    args = ["--jobs", "1", "--work", str(work), "--store", str(store), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--datasets", "none-1"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not work.exists()  # nothing generated, nothing trained
    doc = json.loads(out.read_text(encoding="utf-8"))
    regrets = [r["regret"] for r in stored]
    assert doc["complete"] and doc["total"] == len(vd.DATASETS) == 8
    assert doc["regret_mean"] == round(sum(regrets) / 8, 4) and doc["regret_max"] == max(regrets)
    assert doc["correct"] == sum(r["correct"] for r in stored)
    assert [r["name"] for r in doc["datasets"]] == [d[0] for d in vd.DATASETS]
    assert doc["settings"]["full_steps"] == 1000 and doc["settings"]["truth_seeds"] == 2
    assert doc["dataset_seconds"] == sum(r["seconds"] for r in stored)

    text = results_renderer("diagnose_datasets/*.json")(json.loads((store / "none-1.json").read_text("utf-8")))[0]
    assert "Stored dataset `none-1` (`none`, seed 305; truth at 1000 steps over 2 training seed(s))" in text

    refused = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--datasets", "none-1", "--truth-seeds", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode != 0 and not work.exists()
    assert refused.stderr.strip().splitlines()[-1] == (
        f"{store / 'none-1.json'}: stored with other truth_seeds; delete it or choose another --store"
    )


def test_the_confirmation_set_is_fresh_and_carries_its_declared_reading(tmp_path: Path) -> None:
    """The bet is judged on datasets it was not chosen on: new seeds, the same kinds of shift, its own results file."""
    vd = _script()
    development, confirmation = vd.SETS["development"][0], vd.SETS["confirmation"][0]
    assert [d[1] for d in confirmation] == [d[1] for d in development]
    assert not {d[0] for d in confirmation} & {d[0] for d in development}
    assert not {d[2] for d in confirmation} & {d[2] for d in development}
    test_seeds = {d[2] + vd.TEST_SEED_OFFSET for d in development + confirmation}
    assert not test_seeds & {d[2] for d in development + confirmation}  # no test case is ever a training case

    store, work = tmp_path / "store", tmp_path / "work"
    for k, (n, sc, seed) in enumerate(confirmation):
        vd.replicate_store.save(store, n, vd.key(sc, seed, 1000, 2), _result(n, sc, seed, k))
    out = tmp_path / "confirmation.json"
    args = ["--set", "confirmation", "--jobs", "1", "--work", str(work), "--store", str(store), "--out", str(out)]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not work.exists()
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["set"] == "confirmation" and doc["declared"] == vd.DECLARED and doc["complete"]
    assert [r["name"] for r in doc["datasets"]] == [d[0] for d in confirmation]
    assert doc["regret_leaning_mean"] == 0 and doc["regret_mean"] > 0  # the two readings are kept apart
    text = "\n".join(results_renderer("diagnose_confirmation.json")(doc))
    assert f"Confirmation set (fresh seeds): {vd.DECLARED}." in text and "protocols-3" in text

    wrong = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--datasets", "none-1"], capture_output=True, text=True, timeout=300
    )
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines()[-1].endswith(
        "--datasets: none-1 not in --set confirmation"
    )
