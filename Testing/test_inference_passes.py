"""benchmarks/inference.py --only passes: Dice and seconds per case of 1, 2, 4 and 8 mirrored passes on development
cases, merged into an existing results file, and the rendered choice (a tiny bundle on `clinics`, 4 mm, --quick)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, is_fraction, results_renderer, tiny_net

from UHarmonyLib.model.card import MIRROR_PASSES
from UHarmonyLib.model.weights import make_card, save_bundle

SITES = ["hospital-3t-3d", "hospital-1.5t-2d", "hospital-3t-2d", "hospital-1.5t-old"]  # the clinics scenario's
PROTOCOL = json.loads((REPO / "benchmarks" / "protocol.json").read_text(encoding="utf-8"))


@pytest.fixture
def clinics_bundle(tmp_path: Path) -> Path:
    """A tiny random model with the clinics scenario's channels, labels and sites, at 4 mm."""
    net = tiny_net(in_channels=4, num_sites=len(SITES))
    card = make_card(
        net,
        name="tiny-clinics",
        version=1,
        channels=[{"name": c, "modality": "MR"} for c in ("flair", "t1", "t1ce", "t2")],
        labels=[
            {"value": 1, "name": "lesion core", "color": "#ff0000"},
            {"value": 2, "name": "edema", "color": "#00c0ff"},
        ],
        sites=[{"name": s} for s in SITES],
        preprocessing={"spacing": [4.0, 4.0, 4.0]},
        inference={"patch_size": [32, 32, 32], "overlap": 0.25},
    )
    return save_bundle(net, card, tmp_path / "tiny-clinics-v1")


@pytest.mark.slow  # a benchmark --quick run: four cases, fifteen passes each
def test_passes_section_is_measured_kept_beside_the_rest_and_rendered(clinics_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "inference.json"
    out.write_text(json.dumps({"overhead_ratio": 0.98, "windows": 27}), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "benchmarks/inference.py", "--only", "passes", "--quick", "--passes-model",
         str(clinics_bundle), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert (doc["overhead_ratio"], doc["windows"]) == (0.98, 27)  # the other sections stay as they were
    section = doc["passes"]
    rows = section["rows"]
    assert [r["passes"] for r in rows] == [1, 2, 4, 8]
    assert all(r["cases"] == len(SITES) and is_fraction(r["dice"]) and r["seconds"] > 0 for r in rows), rows
    # never a test seed: the protocol's first development seed
    assert section["evaluation"] == "development" and section["seed"] == PROTOCOL["development_seeds"][0]
    assert section["sites"] == SITES
    pairs = {(c["a_passes"], c["b_passes"]) for c in section["comparisons"]}
    assert pairs == {(a, b) for a in (1, 2, 4, 8) for b in (1, 2, 4, 8) if a < b}
    assert section["choice"]["chosen"] in (1, 2, 4, 8) and section["choice"]["engine_default"] == MIRROR_PASSES
    text = "\n".join(results_renderer("inference.json")(doc))
    assert f"Measured choice: {section['choice']['chosen']}, by the rule" in text and "| 8 |" in text
