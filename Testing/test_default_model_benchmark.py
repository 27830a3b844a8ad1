"""benchmarks/default_model.py writes the issue's figures for any bundle (here a tiny one, 4 mm), on the protocol's
development seed, with every case's record beside them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_main

from UHarmonyLib.evaluation.scoring import WHOLE
from UHarmonyLib.training import TrainConfig, train

KEYS = (
    "dice_whole_lesion_seen",
    "dice_whole_lesion_unseen",
    "gate_accuracy_seen",
    "entropy_seen_mean",
    "entropy_unseen_mean",
    "demo_seconds",
)
PROTOCOL = json.loads((REPO / "benchmarks" / "protocol.json").read_text(encoding="utf-8"))
SEEN = {"hospital-a", "hospital-b", "hospital-c", "hospital-d"}
UNSEEN = {"unseen-lowfield", "unseen-inverted-gain"}


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
    assert set(figures["dice_whole_lesion_seen"]) == SEEN and set(figures["dice_whole_lesion_unseen"]) == UNSEEN
    dice = [*figures["dice_whole_lesion_seen"].values(), *figures["dice_whole_lesion_unseen"].values()]
    assert all(0.0 <= d <= 1.0 for d in dice)
    assert 0.0 <= figures["gate_accuracy_seen"] <= 1.0 and math.isfinite(figures["distance_unseen_mean"])
    # not a final run: the protocol's first development seed, never a test seed
    assert figures["evaluation"] == "development" and figures["protocol"] == PROTOCOL
    assert figures["seed"] == PROTOCOL["development_seeds"][0]

    # one record per case (six sites, one case each) in the protocol's record format, beside the figures
    assert figures["case_scores"] == "figures.cases.json" and "cases" not in figures
    cases = json.loads((tmp_path / figures["case_scores"]).read_text(encoding="utf-8"))
    assert cases["summary"] == "figures.json" and cases["evaluation"] == "development"
    records = cases["cases"]
    assert sorted(r["site"] for r in records) == sorted(SEEN | UNSEEN) and len({r["case"] for r in records}) == 6
    for r in records:
        assert r["arm"] == "m-v1" and r["replicate"] == 0 and r["site_mode"] == "auto", r
        assert all(WHOLE in r[m] for m in ("dice", "hd95_mm", "lesion_dice")) and r["distance"] is not None, r
        # hospital-c annotates only the whole lesion, so it is scored on the whole lesion only
        assert set(r["dice"]) == ({WHOLE} if r["site"] == "hospital-c" else {"lesion core", "edema", WHOLE}), r
        assert 0.0 <= r["dice"][WHOLE] <= 1.0 and isinstance(r["familiar"], bool)
    per_site = {**figures["dice_whole_lesion_seen"], **figures["dice_whole_lesion_unseen"]}
    assert all(per_site[r["site"]] == r["dice"][WHOLE] for r in records)  # one case per site: its mean
