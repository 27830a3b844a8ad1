"""benchmarks/default_model.py writes the issue's figures for any bundle (here a tiny one on `clinics`, 4 mm), on the
protocol's development seed, with every case's record beside them, and calibrates the flag into the card."""

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
from UHarmonyLib.model.card import MIRROR_PASSES
from UHarmonyLib.training import TrainConfig, train

KEYS = (
    "dice_whole_lesion_seen",
    "dice_whole_lesion_unseen",
    "lesion_dice_whole_lesion",
    "gate",
    "unfamiliar",
    "unfamiliar_threshold",
    "entropy_seen_mean",
    "entropy_unseen_mean",
    "demo_seconds",
)
PROTOCOL = json.loads((REPO / "benchmarks" / "protocol.json").read_text(encoding="utf-8"))
SEEN = {"hospital-3t-3d", "hospital-1.5t-2d", "hospital-3t-2d", "hospital-1.5t-old"}
UNSEEN = {"unseen-1.5t-spgr", "unseen-3t-se"}


@pytest.mark.slow  # a benchmark --quick run
def test_figures_script_writes_every_key(tmp_path: Path) -> None:
    run = run_main("synth", "--scenario", "clinics", "--out", tmp_path / "data", "--spacing", 4, "--cases-per-site", 2)
    assert run.code == 0, run
    model = train(
        TrainConfig(data=[tmp_path / "data"], out=tmp_path / "m-v1", steps=3, patch=(32,), filters=(4, 8, 16))
    )
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/default_model.py", "--train-data", str(tmp_path / "data" / "dataset.json"),
         "--model", str(model), "--cases-per-site", "1", "--spacing", "4", "--skip-demo", "--calibrate",
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert all(k in figures for k in KEYS) and figures["demo_seconds"] is None
    assert figures["passes"] == MIRROR_PASSES == 1  # as users run it: the engine's default
    assert set(figures["dice_whole_lesion_seen"]) == SEEN and set(figures["dice_whole_lesion_unseen"]) == UNSEEN
    dice = [*figures["dice_whole_lesion_seen"].values(), *figures["dice_whole_lesion_unseen"].values()]
    assert all(0.0 <= d <= 1.0 for d in dice)
    assert figures["channels"] == ["flair", "t1", "t1ce", "t2"]
    assert figures["gate"]["cases"] == 4 and all(0.0 <= figures["gate"][k] <= 1.0 for k in ("accuracy", "ece"))
    assert math.isfinite(figures["distance_unseen_mean"])
    # the flag: threshold from 5 development cases per known site (the last development seed), written to the card
    threshold = figures["unfamiliar_threshold"]
    assert threshold["cases"] == 20 and threshold["written_to_card"] and str(PROTOCOL["development_seeds"][-1]) in (
        threshold["data"])  # fmt: skip
    card = json.loads((model / "model.json").read_text(encoding="utf-8"))
    assert card["inference"]["familiar_distance"] == threshold["threshold"] == figures["familiar_distance"]
    assert card["metrics"]["familiar_calibration"]["false_positive_rate"] == 0.05
    assert [u["site"] for u in figures["unfamiliar"]] == ["unseen-1.5t-spgr", "unseen-3t-se"]
    assert all(0.0 <= u["auroc"] <= 1.0 and 0.0 <= u["coverage"] <= 1.0 for u in figures["unfamiliar"])
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
        assert set(r["dice"]) == {"lesion core", "edema", WHOLE}, r  # hospital-1.5t-old lacks t1ce, not labels
        assert 0.0 <= r["dice"][WHOLE] <= 1.0 and isinstance(r["familiar"], bool)
    per_site = {**figures["dice_whole_lesion_seen"], **figures["dice_whole_lesion_unseen"]}
    assert all(per_site[r["site"]] == r["dice"][WHOLE] for r in records)  # one case per site: its mean
