"""What `uharmony segment` writes beside the label map says what it holds: named probability components, named
gate-map values (Slicer segments for .seg.nrrd), and a familiarity judgement for a named site."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk
import torch
from conftest import LABELS, SITES, CliRun, run_main, tiny_net

from UHarmonyLib.commands.segment import site_labels
from UHarmonyLib.model.signature_bank import SignatureBank
from UHarmonyLib.model.weights import make_card, save_bundle

SITE_NAMES = [s["name"] for s in SITES]
CLASSES = ["background", *(str(lab["name"]) for lab in LABELS)]


def _segment(bundle: Path, case: Path, out: Path, *extra: object) -> CliRun:
    run = run_main("segment", "--model", bundle, case, "--out", out, "--device", "cpu", "--no-mirror", *extra)
    assert run.code == 0, run.stderr
    return run


def test_probabilities_and_seg_nrrd_gate_map_are_named(tiny_bundle: Path, volume_file: Path, tmp_path: Path) -> None:
    """Each probability component names its class and label value; a .seg.nrrd gate map is one segment per site
    (no background), in distinct colours, as Slicer loads it."""
    probs, gate_map = tmp_path / "probs.nrrd", tmp_path / "gate.seg.nrrd"
    _segment(tiny_bundle, volume_file, tmp_path / "seg.nrrd", "--probabilities", probs, "--gate-map", gate_map)
    image = sitk.ReadImage(str(probs))
    assert image.GetNumberOfComponentsPerPixel() == len(CLASSES)
    assert [image.GetMetaData(f"UHarmony_Component{i}_Class") for i in range(len(CLASSES))] == CLASSES
    values = ["0", *(str(lab["value"]) for lab in LABELS)]
    assert [image.GetMetaData(f"UHarmony_Component{i}_LabelValue") for i in range(len(CLASSES))] == values
    image = sitk.ReadImage(str(gate_map))
    assert [image.GetMetaData(f"Segment{i}_Name") for i in range(len(SITES))] == SITE_NAMES
    assert not image.HasMetaDataKey(f"Segment{len(SITES)}_Name")
    assert [image.GetMetaData(f"Segment{i}_LabelValue") for i in range(len(SITES))] == ["1", "2", "3"]
    assert len({image.GetMetaData(f"Segment{i}_Color") for i in range(len(SITES))}) == len(SITES)
    assert [image.GetMetaData(f"UHarmony_Value{v}_Site") for v in (1, 2, 3)] == SITE_NAMES  # kept beside segments


def test_nifti_probabilities_and_plain_gate_map_are_named(tiny_bundle: Path, volume_file: Path, tmp_path: Path) -> None:
    """NIfTI keeps no custom keys, so the class order goes into its description; a plain gate map names each value."""
    probs, gate_map = tmp_path / "probs.nii.gz", tmp_path / "gate.mha"
    _segment(tiny_bundle, volume_file, tmp_path / "seg.nii.gz", "--probabilities", probs, "--gate-map", gate_map)
    assert sitk.ReadImage(str(probs)).GetMetaData("descrip") == "probabilities: " + "|".join(CLASSES)
    image = sitk.ReadImage(str(gate_map))
    assert [image.GetMetaData(f"UHarmony_Value{v}_Site") for v in range(1, len(SITES) + 1)] == SITE_NAMES
    assert not image.HasMetaDataKey("UHarmony_Value0_Site")  # 0 never occurs: every voxel has a most likely site


def test_site_colours_stay_distinct_beyond_the_palette() -> None:
    labels = site_labels([f"site-{i}" for i in range(30)])
    assert len({lab["color"] for lab in labels}) == 30
    assert all(len(lab["color"]) == 7 and lab["color"].startswith("#") for lab in labels)


def _banked_bundle(path: Path, threshold: float) -> Path:
    """The tiny model with a gate bank of signatures far from any blob volume's; familiar up to `threshold`."""
    net = tiny_net(0)
    width = net.gate.input_layer.in_features
    generator = torch.Generator().manual_seed(0)
    bank = SignatureBank(
        vectors=50.0 + torch.randn(12, width, generator=generator),
        sites=torch.arange(3).repeat_interleave(4),
        cases=torch.arange(6).repeat_interleave(2),
        weights=torch.ones(12),
        threshold=threshold,
    )
    card = make_card(
        net,
        name="banked",
        version=1,
        channels=[{"name": "FLAIR", "modality": "MR"}],
        labels=LABELS,
        sites=SITES,
        preprocessing={"spacing": [1.5, 1.5, 1.5]},
        inference={"patch_size": [16, 16, 16], "overlap": 0.25, "batch_size": 2},
    )
    return save_bundle(net, card, path, bank=bank)


def _gate(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def test_named_site_is_judged_against_the_bank_as_auto_is(volume_file: Path, tmp_path: Path) -> None:
    """--site NAME measures the distance to the bank too: a far case is unfamiliar whether or not the site is named."""
    strict = _banked_bundle(tmp_path / "strict-v1", threshold=1.0)
    named = _segment(strict, volume_file, tmp_path / "a.nrrd", "--site", "beta", "--gate-json", tmp_path / "a.json")
    given = _gate(tmp_path / "a.json")
    _segment(strict, volume_file, tmp_path / "b.nrrd", "--gate-json", tmp_path / "b.json")
    auto = _gate(tmp_path / "b.json")
    assert given["site_given"] is True and given["chosen"] == "beta"
    assert given["distance"] == auto["distance"] and given["distance"] > given["familiar_distance"] == 1.0
    assert given["familiar"] is False and auto["familiar"] is False
    assert "far from every known site" in given["familiar_reason"]
    assert "WARNING: this case looks unlike every site" in named.stdout

    lenient = _banked_bundle(tmp_path / "lenient-v1", threshold=1e9)
    _segment(lenient, volume_file, tmp_path / "c.nrrd", "--site", "beta", "--gate-json", tmp_path / "c.json")
    near = _gate(tmp_path / "c.json")
    assert near["familiar"] is True and near["familiar_reason"] is None
    assert near["distance"] == pytest.approx(given["distance"], abs=1e-4)


def test_named_site_without_a_bank_is_not_called_familiar(tiny_bundle: Path, volume_file: Path, tmp_path: Path) -> None:
    """Without a bank nothing can be measured: familiar is null, with the reason, in the file and on the terminal."""
    run = _segment(tiny_bundle, volume_file, tmp_path / "s.nrrd", "--site", "gamma", "--gate-json", tmp_path / "g.json")
    gate = _gate(tmp_path / "g.json")
    assert gate["familiar"] is None and gate["distance"] is None
    assert "no gate bank" in gate["familiar_reason"]
    assert "Not checked whether this case looks like the model's sites" in run.stdout
