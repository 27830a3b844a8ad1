"""benchmarks/federated.py --quick: three federations and centralized training on the protocol's development seed,
every case's record beside the figures, federated U-Harmony compared with each baseline, and its Markdown form;
a local-steps sweep at a matched budget, training loss per round, every model on the centralized grid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, is_fraction, results_renderer

from UHarmonyLib.evaluation.scoring import WHOLE

PROTOCOL = json.loads((REPO / "benchmarks" / "protocol.json").read_text(encoding="utf-8"))
METHODS = ["federated_uharmony", "federated_fedbn", "federated_fedavg", "centralized_uharmony"]
SITES = {"hospital-a", "hospital-b", "hospital-c", "hospital-d"}


def run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "benchmarks/federated.py", *args],
        cwd=REPO, capture_output=True, encoding="utf-8", timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def test_help_and_quick_never_scores_on_test_seeds(tmp_path: Path) -> None:
    assert run("--help").returncode == 0
    proc = run("--quick", "--final", "--work", str(tmp_path / "work"))
    assert proc.returncode == 2 and "--quick never uses the test seeds" in proc.stderr
    assert not (tmp_path / "work").exists()


@pytest.mark.slow  # a benchmark --quick run: four trainings, three of them in Flower's simulation runtime
def test_quick_run_scores_every_case_and_compares(tmp_path: Path) -> None:
    out = tmp_path / "federated.json"
    proc = run("--quick", "--work", str(tmp_path / "work"), "--out", str(out), "--local-steps-sweep", "1", "2",
               timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert [r["method"] for r in doc["rows"]] == METHODS
    for r in doc["rows"]:
        assert set(r["per_site"]) == SITES and all(is_fraction(v) for v in [r["dice_mean"], *r["per_site"].values()])
    federated = doc["rows"][:3]
    assert [r["site_params"] for r in federated] == ["residual", "independent", "independent"]
    assert all(len(r["train_loss_per_round"]) == r["rounds"] == 2 for r in federated)
    # the same grid as centralized training, which chose it as `uharmony train` does (the cases' median spacing)
    assert doc["settings"]["grid_mm"] == doc["settings"]["spacing"] == 4.0

    # quick's budget is 2 rounds x 2 local steps: 1 local step takes 4 rounds; 2 is the main row itself
    sweep = doc["local_steps_sweep"]
    assert [(r["local_steps"], r["rounds"]) for r in sweep] == [(1, 4), (2, 2)]
    assert sweep[1]["dice_mean"] == federated[0]["dice_mean"]
    for r in sweep:
        assert len(r["train_loss_per_round"]) == r["rounds"] and set(r["per_site"]) == SITES
        assert is_fraction(r["dice_mean"]), r
    assert doc["evaluation"] == "development" and doc["protocol"] == PROTOCOL
    train, test = PROTOCOL["training_seeds"][0], PROTOCOL["development_seeds"][0]
    assert doc["settings"]["data_seeds"] == {"train": train, "test": test}

    # one record per scored case: four arms x four sites x one test case, each site's own bundle on its cases
    cases = json.loads((tmp_path / doc["case_scores"]).read_text(encoding="utf-8"))
    assert doc["case_scores"] == "federated.cases.json" and cases["evaluation"] == "development"
    records = cases["cases"]
    assert len(records) == 16
    for method in METHODS:
        assert sorted(r["site"] for r in records if r["arm"] == method) == sorted(SITES), method
    for r in records:
        assert all(WHOLE in r[m] for m in ("dice", "hd95_mm", "lesion_dice")) and is_fraction(r["dice"][WHOLE]), r
        assert r["site_mode"] == ("given" if r["arm"] == "federated_fedbn" else "auto"), r

    names = [f"federated_uharmony - {m}" for m in ("federated_fedavg", "federated_fedbn", "centralized_uharmony")]
    assert [c["name"] for c in doc["comparisons"]] == names
    for c in doc["comparisons"]:
        low, high = c["ci95"]
        assert low <= c["diff_mean"] <= high and c["replicates"] == 1 and c["cases"] == 4, c

    markdown = "\n".join(results_renderer("federated.json")(doc))
    assert all(f"`{m}`" in markdown for m in METHODS) and "Command:" in markdown
