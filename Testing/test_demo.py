"""The main job: the bundled default model segments the bundled sample case end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import assert_same_grid, run_subprocess

from UHarmonyLib.commands.demo import sample_channels
from UHarmonyLib.evaluation.scoring import WHOLE
from UHarmonyLib.model.weights import load_bundle
from UHarmonyLib.resources import default_model


def test_bundled_model_loads_and_matches_the_sample() -> None:
    """The shipped bundle passes every checksum, and the sample has every channel it needs plus a lesion."""
    bundle = load_bundle(default_model())
    images, truth = sample_channels(bundle.channel_names)
    assert len(images) == len(bundle.channel_names)
    assert all(sitk.ReadImage(str(p)).GetDimension() == 3 for p in images)
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(truth))))) >= {0, 1}


@pytest.mark.slow  # the whole demo
def test_demo_end_to_end(tmp_path: Path) -> None:
    """`uharmony demo` (a real process) writes every output and reports a gate decision and a non-trivial Dice."""
    run = run_subprocess("demo", "--out", tmp_path, "--progress", "json")
    assert run.code == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert [e["event"] for e in events].count("result") == 1
    final = events[-1]
    assert final["event"] == "result"
    gate = final["gate"]
    assert abs(sum(gate["sites"].values()) - 1.0) < 1e-3
    assert gate["chosen"] == max(gate["sites"], key=gate["sites"].get)
    assert final["dice"][WHOLE] > 0.2  # a trained model finds the lesion; an untrained one scores ~0
    seg = sitk.ReadImage(str(tmp_path / "sample_segmentation.seg.nrrd"))
    images, _ = sample_channels(load_bundle(default_model()).channel_names)
    assert_same_grid(seg, sitk.ReadImage(str(images[0])))
    assert seg.GetMetaData("Segment0_Name") == load_bundle(default_model()).labels[0]["name"]
    assert (tmp_path / "sample_overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "sample_gate.json").read_text())["chosen"] == gate["chosen"]
