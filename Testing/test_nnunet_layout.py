"""nnU-Net raw datasets (no "training" list; imagesTr/CASE_XXXX + labelsTr/CASE) train as one site."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import assert_one_line_error, run_main

from UHarmonyLib.data.plan import plan_training
from UHarmonyLib.model.weights import load_bundle
from UHarmonyLib.training import TrainConfig, train

SPEC = {"name": "one", "sites": [{"name": "only", "channels": ["T1", "FLAIR"]}]}


def _nnunet(tmp_path: Path) -> Path:
    """A synth dataset (its files already follow nnU-Net naming) described the nnU-Net way."""
    (tmp_path / "spec.json").write_text(json.dumps(SPEC), encoding="utf-8")
    run = run_main("synth", "--scenario", tmp_path / "spec.json", "--out", tmp_path / "Dataset042_Clinic",
                   "--spacing", 4, "--cases-per-site", 3)  # fmt: skip
    assert run.code == 0, run
    folder = tmp_path / "Dataset042_Clinic"
    raw = {
        "name": "Dataset042_Clinic",
        "channel_names": {"0": "T1", "1": "FLAIR"},
        "labels": {"background": 0, "lesion core": 1, "edema": 2},
        "numTraining": 3,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(raw), encoding="utf-8")
    return folder


def test_nnunet_raw_layout_is_planned_and_trained(tmp_path: Path) -> None:
    folder = _nnunet(tmp_path)
    plan = plan_training([folder], 0.0, 0)
    assert [s.name for s in plan.sites] == ["Dataset042_Clinic"]
    assert plan.channels == ["T1", "FLAIR"] and plan.label_names == ["lesion core", "edema"]
    assert [c.entry.case for c in plan.cases] == ["only_000", "only_001", "only_002"]
    assert [p.name for p in plan.cases[0].entry.images] == ["only_000_0000.nii.gz", "only_000_0001.nii.gz"]
    out = train(TrainConfig(data=[folder], out=tmp_path / "nn-v1", steps=2, patch=(32,), filters=(4, 8, 16)))
    assert [s["name"] for s in load_bundle(out).card["sites"]] == ["Dataset042_Clinic"]


def test_nnunet_dataset_missing_a_channel_file_is_refused(tmp_path: Path) -> None:
    folder = _nnunet(tmp_path)
    (folder / "imagesTr" / "only_001_0001.nii.gz").unlink()
    run = run_main("train", "--data", folder, "--out", tmp_path / "x-v1", "--steps", 1)
    line = assert_one_line_error(run)
    assert "only_001_0001.nii.gz" in line and "not found" in line
