"""`uharmony add-site`: a new bundle version from a few cases; the parent and old sites stay intact.

A tiny two-site model is trained on real synthetic data (4 mm, one thread), then a third
site with its own appearance is added through the real command line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import assert_one_line_error, run_main

from UHarmonyLib.inference.engine import segment_volumes
from UHarmonyLib.model.weights import load_bundle
from UHarmonyLib.training import TrainConfig, train
from UHarmonyLib.training.add_site import AddSiteConfig, _child_name

PARENT_SPEC = {
    "name": "two-sites",
    "sites": [
        {"name": "alpha", "channels": ["T1", "FLAIR"], "lesions": {"count": [2, 2], "radius_mm": [8, 10]}},
        {
            "name": "beta",
            "channels": ["T1", "FLAIR"],
            "gamma": 0.6,
            "noise": 0.06,
            "scale": 3000.0,
            "lesions": {"count": [2, 2], "radius_mm": [8, 10]},
        },
    ],
}
NEW_SPEC = {
    "name": "clinic",
    "sites": [
        {
            "name": "gamma",
            "channels": ["T1", "FLAIR"],
            "gamma": 1.6,
            "bias": 0.3,
            "blur": 1.0,
            "scale": 90.0,
            "lesions": {"count": [2, 2], "radius_mm": [8, 10]},
        }
    ],
}
TINY = {"patch": (32,), "filters": (4, 8, 16)}


def _synth(spec: dict[str, Any], folder: Path, cases: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    run = run_main("synth", "--scenario", folder / "spec.json", "--out", folder / "data", "--spacing", 4,
                   "--cases-per-site", cases)  # fmt: skip
    assert run.code == 0, run
    return folder / "data"


def _tree_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _images(data: Path, case: int = 0) -> tuple[list[sitk.Image], sitk.Image, str]:
    entry = json.loads((data / "dataset.json").read_text())["training"][case]
    images = [sitk.Cast(sitk.ReadImage(str(data / p)), sitk.sitkFloat32) for p in entry["image"]]
    return images, sitk.ReadImage(str(data / entry["label"])), entry["site"]


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parent")
    data = _synth(PARENT_SPEC, root, 3)
    return train(TrainConfig(data=[data], out=root / "clinics-v1", steps=24, val_fraction=0.0, **TINY))


@pytest.fixture(scope="module")
def new_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _synth(NEW_SPEC, tmp_path_factory.mktemp("new"), 4)


@pytest.fixture(scope="module")
def child(parent: Path, new_site: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    before = _tree_digest(parent)
    out = tmp_path_factory.mktemp("child") / "clinics-v2"
    run = run_main("add-site", "--model", parent, "--data", new_site, "--site", "gamma", "--out", out, "--steps", 6)
    assert run.code == 0, run
    return out, before


def test_child_is_a_new_version_and_the_parent_is_untouched(
    child: tuple[Path, dict[str, str]], parent: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out, before = child
    assert _tree_digest(parent) == before
    card = load_bundle(out).card
    parent_card = load_bundle(parent).card
    assert (card["name"], card["version"]) == ("clinics", 2)
    assert [s["name"] for s in card["sites"]] == ["alpha", "beta", "gamma"]
    assert "2 sites" in parent_card["title"] and card["title"] == parent_card["title"].replace("2 sites", "3 sites")
    prov = card["provenance"]
    assert prov["created"] and prov["software"].startswith("UHarmonyLib")  # `models info`: not "created ? by ?"
    assert prov["parent"]["card_sha256"] == parent_card["card_sha256"] and "path" not in prov["parent"]
    where = str(tmp_path_factory.getbasetemp())  # cards travel between sites: no local folder in them
    assert where not in json.dumps(card) and where not in json.dumps(parent_card)
    assert (parent_card["sites"][0]["dataset"], card["sites"][2]["dataset"]) == ("two-sites", "clinic")  # names
    assert [set(d) for d in prov["data"]] == [{"name", "sha256", "mni_template"}]
    assert prov["parent"]["version"] == 1
    assert len(prov["train_cases"]) == 3 and len(prov["validation_cases"]) == 1  # 4 cases, 20 % held out
    assert set(prov["initial_site_mix"]) == {"alpha", "beta"}
    assert sum(prov["initial_site_mix"].values()) == pytest.approx(1.0, abs=1e-3)
    metrics = card["metrics"]
    assert metrics["after"]["validation_cases"] == 1
    assert metrics["before"]["sites"]["gamma"]["cases"] == 1
    assert (out / "gate_bank.safetensors").is_file()


@pytest.mark.parametrize(
    ("folder", "version"),
    [("my-hospital-model", 2), ("clinics-v7", 7), ("clinics-v1", 2), ("other-v9", 2)],
    ids=["plain-folder", "later-version-folder", "same-version-folder", "another-name-folder"],
)
def test_a_child_keeps_the_parents_name_whatever_the_folder(parent: Path, folder: str, version: int) -> None:
    """A child is `<parent name> v<later>`: the folder may ask for a later version, never for another name."""
    config = AddSiteConfig(model=parent, data=parent, site="gamma", out=parent.parent / folder)
    assert _child_name(config, load_bundle(parent)) == ("clinics", version)


def test_old_sites_are_bit_identical_with_the_site_named(child: tuple[Path, dict[str, str]], parent: Path) -> None:
    old, new = load_bundle(parent), load_bundle(child[0])
    images, _, site = _images(parent.parent / "data")
    for name in ("alpha", "beta"):
        a = segment_volumes(old, images, site=name, want_probabilities=True)
        b = segment_volumes(new, images, site=name, want_probabilities=True)
        assert np.array_equal(sitk.GetArrayViewFromImage(a.labels), sitk.GetArrayViewFromImage(b.labels))
        assert np.array_equal(sitk.GetArrayViewFromImage(a.probabilities), sitk.GetArrayViewFromImage(b.probabilities))
    assert site == "alpha"


def test_gate_recognizes_old_sites_from_the_bank_and_the_new_one(
    child: tuple[Path, dict[str, str]], parent: Path, new_site: Path
) -> None:
    new = load_bundle(child[0])
    accuracy = new.card["metrics"]["gate_bank_accuracy"]
    assert set(accuracy) == {"alpha", "beta", "gamma"}
    assert min(accuracy.values()) >= 0.9, accuracy
    old_data = parent.parent / "data"
    for case in range(6):
        images, _, site = _images(old_data, case)
        assert segment_volumes(new, images).gate.chosen == site
    images, _, site = _images(new_site, 3)
    decision = segment_volumes(new, images).gate
    assert (site, decision.chosen) == ("gamma", "gamma")


def test_train_backbone_moves_old_sites(parent: Path, new_site: Path, tmp_path: Path) -> None:
    out = tmp_path / "moved-v2"
    run = run_main("add-site", "--model", parent, "--data", new_site, "--site", "gamma", "--out", out,
                   "--steps", 3, "--train-backbone")  # fmt: skip
    assert run.code == 0, run
    old, new = load_bundle(parent), load_bundle(out)
    images, _, _ = _images(parent.parent / "data")
    a = segment_volumes(old, images, site="alpha", want_probabilities=True).probabilities
    b = segment_volumes(new, images, site="alpha", want_probabilities=True).probabilities
    assert not np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
    assert new.card["provenance"]["train_backbone"] is True
    assert "backbone fine-tuned" in new.card["description"]


def _relabel(data: Path, folder: Path, **changes: Any) -> Path:
    """A copy of a dataset.json (same image files) with top-level keys changed."""
    meta = json.loads((data / "dataset.json").read_text())
    meta.update(changes)
    for entry in meta["training"]:
        for key in ("image", "label"):
            value = entry[key]
            entry[key] = [str(data / v) for v in value] if isinstance(value, list) else str(data / value)
        if "labels" in changes:
            entry.pop("labels", None)
        if "channel_names" in changes:
            entry["channels"] = [changes["channel_names"][str(k)] for k in range(len(entry["image"]))]
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder / "dataset.json"


def test_new_label_adds_a_class_old_sites_never_pick(parent: Path, new_site: Path, tmp_path: Path) -> None:
    scar = _relabel(new_site, tmp_path / "scar", labels={"0": "background", "1": "lesion core", "2": "scar"})
    refused = run_main("add-site", "--model", parent, "--data", scar, "--site", "gamma", "--out", tmp_path / "no")
    assert "label 'scar' is not a label of the model" in assert_one_line_error(refused)
    assert str(scar) in refused.stderr and not (tmp_path / "no").exists()
    out = tmp_path / "scar-v2"
    run = run_main("add-site", "--model", parent, "--data", scar, "--site", "gamma", "--out", out,
                   "--steps", 3, "--new-label", "scar")  # fmt: skip
    assert run.code == 0, run
    old, new = load_bundle(parent), load_bundle(out)
    assert [lab["name"] for lab in new.labels] == [lab["name"] for lab in old.labels] + ["scar"]
    assert new.config.out_channels == old.config.out_channels + 1
    images, _, _ = _images(parent.parent / "data")
    a = segment_volumes(old, images, site="beta", want_probabilities=True)
    b = segment_volumes(new, images, site="beta", want_probabilities=True)
    assert np.array_equal(sitk.GetArrayViewFromImage(a.labels), sitk.GetArrayViewFromImage(b.labels))
    pa, pb = sitk.GetArrayViewFromImage(a.probabilities), sitk.GetArrayViewFromImage(b.probabilities)
    # a wider output convolution may take another kernel path (one thread here: another blocking), so the old
    # classes' probabilities agree to float32 rounding rather than bit for bit; the labels above agree exactly
    assert np.allclose(pa, pb[..., : pa.shape[-1]], rtol=0, atol=1e-6) and pb[..., -1].max() < 1e-30


@pytest.mark.bad_input("add-site", by="args", words="message")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--site", "alpha"], "already has a site of that name"),
        (["--site", "gamma", "--new-label", "edema"], "already has that label"),
        (["--site", "gamma", "--steps", "0"], "--steps must be at least 1"),
        (["--site", "bad/name"], "--site 'bad/name'"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(
    parent: Path, new_site: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    """Refused with one error line, exit code non-zero, and no folder written."""
    out = tmp_path / "refused-v2"
    run = run_main("add-site", "--model", parent, "--data", new_site, "--out", out, *args)
    assert message in assert_one_line_error(run)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_refuses_channels_the_model_lacks_and_empty_datasets(parent: Path, new_site: Path, tmp_path: Path) -> None:
    pd = _relabel(new_site, tmp_path / "pd", channel_names={"0": "T1", "1": "PD"})
    run = run_main("add-site", "--model", parent, "--data", pd, "--site", "g", "--out", tmp_path / "a")
    line = assert_one_line_error(run)
    assert "channel 'PD' is not a channel of the model" in line and str(pd) in line
    empty = _relabel(new_site, tmp_path / "empty", training=[], numTraining=0)
    run = run_main("add-site", "--model", parent, "--data", empty, "--site", "g", "--out", tmp_path / "b")
    line = assert_one_line_error(run)
    assert "no training cases" in line and str(empty) in line
    existing = tmp_path / "exists"
    existing.mkdir()
    run = run_main("add-site", "--model", parent, "--data", new_site, "--site", "g", "--out", existing)
    assert "already exists" in assert_one_line_error(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "exists", "pd"]
