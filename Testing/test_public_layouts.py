"""BraTS 2023/2024 case folders and MSD Task01_BrainTumour are read as downloaded, in the model's names.

Tiny real .nii.gz datasets in each public layout (24x24x16 voxels, a few label blobs) go
through the library's own reading, planning and case loading, then `uharmony train`.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import PERMUTED_FLIPPED, assert_one_line_error, assert_same_grid, blob_array, make_image, run_main

from UHarmonyLib.data.cases import PlannedCase, load_case
from UHarmonyLib.data.datasets import read_dataset
from UHarmonyLib.data.plan import plan_training
from UHarmonyLib.model.weights import load_bundle
from UHarmonyLib.resources import default_model

SIZE = (24, 24, 16)  # x, y, z
GEOMETRY = {"spacing": (1.0, 1.0, 1.5), "origin": (-12.0, 8.0, -11.0), "direction": PERMUTED_FLIPPED}
BRATS_KINDS = ("t1n", "t1c", "t2w", "t2f")
MSD_MODALITY = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
MODEL_CHANNELS = ["flair", "t1", "t1ce", "t2"]
TINY_ARGS = ["--steps", "2", "--patch", "32", "--filters", "4", "8", "16"]
# (z, y, x) voxels of the blobs each label file value is written at
BLOBS = {1: (6, 8, 8), 2: (6, 12, 12), 3: (9, 8, 8), 4: (10, 16, 16)}


def _image(array_zyx: np.ndarray) -> sitk.Image:
    return make_image(array_zyx, **GEOMETRY)


def _label(values: tuple[int, ...]) -> np.ndarray:
    """A label map (z, y, x) with a 3x3x3 blob of each value, centred at BLOBS[value]."""
    array = np.zeros(SIZE[::-1], dtype=np.uint8)
    for v in values:
        z, y, x = BLOBS[v]
        array[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2] = v
    return array


def _write(image: sitk.Image, path: Path) -> None:
    sitk.WriteImage(image, str(path), useCompression=True)


def _brats_case(folder: Path, case: str, seed: int, values: tuple[int, ...], kinds: tuple[str, ...]) -> None:
    (folder / case).mkdir(parents=True)
    for k, kind in enumerate(kinds):
        _write(_image(blob_array(SIZE, seed + k)), folder / case / f"{case}-{kind}.nii.gz")
    _write(_image(_label(values)), folder / case / f"{case}-seg.nii.gz")


@pytest.fixture(scope="module")
def brats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three GLI cases: 2023 labels (1 NCR, 2 SNFH, 3 ET), a 2024 post-treatment one with 4 RC, one lacking -t1c."""
    folder = tmp_path_factory.mktemp("brats") / "BraTS2024-GLI-Training"
    _brats_case(folder, "BraTS-GLI-00000-000", 0, (1, 2, 3), BRATS_KINDS)
    _brats_case(folder, "BraTS-GLI-00001-100", 10, (1, 2, 3, 4), BRATS_KINDS)
    _brats_case(folder, "BraTS-GLI-00002-000", 20, (2, 3), ("t1n", "t2w", "t2f"))
    (folder / "BraTS-GLI-00000-000" / "._BraTS-GLI-00000-000-t1n.nii.gz").write_bytes(b"\0" * 64)  # macOS archive
    return folder


@pytest.fixture(scope="module")
def msd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Task01_BrainTumour as downloaded: 4-D images (FLAIR, T1w, t1gd, T2w), 3-D labels, its dataset.json."""
    folder = tmp_path_factory.mktemp("msd") / "Task01_BrainTumour"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    training = []
    for k in range(3):
        name = f"BRATS_{k:03d}.nii.gz"
        _write(sitk.JoinSeries([_image(blob_array(SIZE, 10 * k + c)) for c in range(4)]), folder / "imagesTr" / name)
        _write(_image(_label((1, 2, 3))), folder / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    data = {
        "name": "BRATS",
        "tensorImageSize": "4D",
        "modality": MSD_MODALITY,
        "labels": MSD_LABELS,
        "numTraining": 3,
        "numTest": 1,
        "training": training,
        "test": ["./imagesTs/BRATS_485.nii.gz"],
    }
    (folder / "dataset.json").write_text(json.dumps(data, indent=4), encoding="utf-8")
    return folder


def _class_at(plan_case: PlannedCase, groups_zyx: np.ndarray, value: int) -> list[int]:
    """The union classes the label-file `value`'s blob became ([0]: background)."""
    return plan_case.groups[int(groups_zyx[BLOBS[value]])]


def test_brats_folder_reads_as_cases_in_model_names(brats: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Case folders become cases named after them, channels in the model's order; a missing file: an absent channel."""
    with caplog.at_level(logging.WARNING):
        entries = read_dataset(brats)
    assert [e.case for e in entries] == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-100", "BraTS-GLI-00002-000"]
    assert entries[0].channels == MODEL_CHANNELS
    assert [p.name for p in entries[0].images] == [
        f"BraTS-GLI-00000-000-{k}.nii.gz" for k in ("t2f", "t1n", "t1c", "t2w")
    ]
    assert entries[2].channels == ["flair", "t1", "t2"] and entries[0].site == "BraTS-GLI"
    assert "BraTS-GLI-00002-000 (no -t1c)" in caplog.text

    plan = plan_training([brats], 0.0, 0)
    assert plan.channels == MODEL_CHANNELS and plan.label_names == ["lesion core", "edema"]
    assert [s.name for s in plan.sites] == ["BraTS-GLI"] and plan.datasets[0]["name"] == brats.name
    # the checksum is the folder's cases, wherever the folder lies
    moved = shutil.copytree(brats, brats.parent.parent / "moved" / brats.name)
    assert plan_training([moved], 0.0, 0).datasets[0]["sha256"] == plan.datasets[0]["sha256"]


def test_brats_labels_become_model_labels(brats: Path) -> None:
    """NCR and ET are lesion core, SNFH edema, the resection cavity background, through the real case loading."""
    plan = plan_training([brats], 0.0, 0)
    post = plan.cases[1]
    loaded = load_case(post, len(plan.channels))
    core, edema = [plan.label_names.index(n) + 1 for n in ("lesion core", "edema")]
    assert _class_at(post, loaded.groups_zyx, 1) == [core]  # NCR
    assert _class_at(post, loaded.groups_zyx, 3) == [core]  # ET
    assert _class_at(post, loaded.groups_zyx, 2) == [edema]  # SNFH
    assert _class_at(post, loaded.groups_zyx, 4) == [0]  # RC: not tumour
    assert post.label_names == ["lesion core", "edema"] and post.groups == [[0], [core], [edema]]
    # the case lacking -t1c: zeros there, its other channels read from their files
    partial = plan.cases[2]
    loaded = load_case(partial, len(plan.channels))
    assert loaded.present == [0, 1, 3] and sitk.GetArrayViewFromImage(loaded.images[2]).max() == 0
    t1 = sitk.ReadImage(str(brats / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-t1n.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(loaded.images[1]), sitk.GetArrayFromImage(t1))


def _bytes_read() -> int:
    """Bytes this process has read through system calls so far (Linux `/proc/self/io`: ITK's C++ reads count)."""
    line = next(x for x in Path("/proc/self/io").read_text().splitlines() if x.startswith("rchar:"))
    return int(line.split()[1])


def test_msd_task01_channels_and_labels(msd: Path) -> None:
    """Task01's 4-D images split into flair, t1, t1ce, t2 on the 3-D grid, read once per case; labels mapped."""
    plan = plan_training([msd / "dataset.json"], 0.0, 0)
    assert plan.channels == MODEL_CHANNELS and plan.label_names == ["lesion core", "edema"]
    assert [s.name for s in plan.sites] == ["BRATS"] and all(c.four_d for c in plan.cases)
    case = plan.cases[1]
    load_case(case, len(plan.channels))  # first use: lazy imports read files too
    before = _bytes_read()
    sitk.ReadImage(str(case.entry.images[0]))
    one_read = _bytes_read() - before
    before = _bytes_read()
    loaded = load_case(case, len(plan.channels))
    # the 4-D file once (and the small label), not once per channel: four reads would be 4 x one_read
    assert one_read <= _bytes_read() - before < 2 * one_read
    for c in range(4):
        expected = _image(blob_array(SIZE, 10 + c))
        assert_same_grid(loaded.images[c], expected)
        assert np.array_equal(sitk.GetArrayFromImage(loaded.images[c]), sitk.GetArrayFromImage(expected))
    core, edema = [plan.label_names.index(n) + 1 for n in ("lesion core", "edema")]
    assert _class_at(case, loaded.groups_zyx, 1) == [edema]  # edema
    assert _class_at(case, loaded.groups_zyx, 2) == [core]  # non-enhancing tumour
    assert _class_at(case, loaded.groups_zyx, 3) == [core]  # enhancing tumour


@pytest.mark.parametrize("layout", ["brats", "msd"])
def test_train_on_a_public_layout(layout: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """`uharmony train --data FOLDER` trains a model with the bundled models' channels and labels."""
    folder = request.getfixturevalue(layout)
    run = run_main("train", "--data", folder, "--out", tmp_path / "public-v1", *TINY_ARGS)
    assert run.code == 0, run
    card = load_bundle(tmp_path / "public-v1").card
    assert [c["name"] for c in card["channels"]] == MODEL_CHANNELS
    assert [lab["name"] for lab in card["labels"]] == ["lesion core", "edema"]
    assert [s["name"] for s in card["sites"]] == ["BraTS-GLI" if layout == "brats" else "BRATS"]


@pytest.mark.parametrize("layout", ["brats", "msd"])
def test_bundled_model_evaluates_a_public_layout(layout: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The bundled default model scores a downloaded layout as it is: channels and labels match by name."""
    folder = request.getfixturevalue(layout)
    out = tmp_path / "report.json"
    run = run_main("evaluate", "--model", default_model(), "--data", folder, "--out", out, "--no-mirror")
    assert run.code == 0, run
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["dataset"]["name"] == (folder.name if layout == "brats" else "BRATS") and len(report["cases"]) == 3
    assert {"lesion core", "edema"} <= set(report["cases"][0]["dice"])


# ---------------------------------------------------------------- bad inputs


def _drop_seg(folder: Path) -> None:
    (folder / "BraTS-GLI-00001-100" / "BraTS-GLI-00001-100-seg.nii.gz").unlink()


def _wrong_prefix(folder: Path) -> None:
    case = folder / "BraTS-GLI-00000-000"
    (case / "BraTS-GLI-00000-000-t2w.nii.gz").rename(case / "BraTS-GLI-00009-000-t2w.nii.gz")


def _mixed(folder: Path) -> None:
    (folder / "imagesTr").mkdir()
    shutil.copy(
        folder / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t1n.nii.gz", folder / "imagesTr" / "a_0000.nii.gz"
    )


def _twice(folder: Path) -> None:
    case = folder / "BraTS-GLI-00000-000"
    sitk.WriteImage(
        sitk.ReadImage(str(case / "BraTS-GLI-00000-000-t1n.nii.gz")), str(case / "BraTS-GLI-00000-000-t1n.nii")
    )


def _seg_only(folder: Path) -> None:
    for kind in ("t1n", "t2w", "t2f"):
        (folder / "BraTS-GLI-00002-000" / f"BraTS-GLI-00002-000-{kind}.nii.gz").unlink()


def _brats_five(folder: Path) -> None:
    _write(
        _image(_label((1, 2)) + 4 * (_label((1,)) > 0)),
        folder / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-seg.nii.gz",
    )


def _three_volumes(folder: Path) -> None:
    _write(sitk.JoinSeries([_image(blob_array(SIZE, c)) for c in range(3)]), folder / "imagesTr" / "BRATS_001.nii.gz")


def _msd_four(folder: Path) -> None:
    _write(_image(_label((1, 2, 4))), folder / "labelsTr" / "BRATS_002.nii.gz")


DEFECTS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "BraTS case folder without -seg": (
        "brats",
        _drop_seg,
        "BraTS-GLI-00001-100: no -seg file: a training case needs labels",
    ),
    "BraTS file prefix not its folder's": ("brats", _wrong_prefix, "differs from its case folder's name"),
    "BraTS folder mixed with imagesTr": ("brats", _mixed, "mixes layouts: imagesTr is not a BraTS case folder"),
    "BraTS case with two -t1n files": ("brats", _twice, "two -t1n files"),
    "BraTS case with only a -seg file": ("brats", _seg_only, "no -t1n, -t1c, -t2w or -t2f file"),
    "BraTS seg with a value 5": ("brats", _brats_five, "label value 5 is not one of the case's labels"),
    "Task01 image with 3 volumes": ("msd", _three_volumes, "holds 3 volume(s) but the dataset names 4 channel(s)"),
    "Task01 label with a value 4": ("msd", _msd_four, "label value 4 is not one of the case's labels"),
}


@pytest.mark.bad_input(
    "uharmony train: a BraTS or MSD Task01 folder", by="defect", words={k: v[2] for k, v in DEFECTS.items()}
)
@pytest.mark.parametrize("defect", list(DEFECTS))
def test_public_layout_defect_is_refused(defect: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Refused in one line (exit 2) naming the file or folder and the problem; nothing is written."""
    layout, change, words = DEFECTS[defect]
    source = request.getfixturevalue(layout)
    folder = Path(shutil.copytree(source, tmp_path / source.name))
    change(folder)
    out = tmp_path / "model-v1"
    run = run_main("train", "--data", folder, "--out", out, *TINY_ARGS)
    line = assert_one_line_error(run)
    assert run.code == 2 and words in line, line
    assert not out.exists() and not out.with_name(out.name + ".work").exists()
