"""Datasets that would train or score the wrong thing are refused before any case is read.

Each defect is written into a copy of a real synthetic dataset.json (4 mm, two sites of
two cases) and given to `train`, `evaluate` and `diagnose` through the real command line.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk
from conftest import assert_one_line_error, run_main

from UHarmonyLib.data.plan import plan_training

SPEC = {
    "name": "two",
    "sites": [
        {"name": "alpha", "channels": ["FLAIR"], "lesions": {"count": [2, 2], "radius_mm": [8, 10]}},
        {"name": "beta", "channels": ["FLAIR"], "gamma": 0.6, "lesions": {"count": [2, 2], "radius_mm": [8, 10]}},
    ],
}
TINY_ARGS = ["--steps", "2", "--patch", "32", "--filters", "4", "8", "16"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("two")
    (folder / "spec.json").write_text(json.dumps(SPEC), encoding="utf-8")
    run = run_main("synth", "--scenario", folder / "spec.json", "--out", folder / "data", "--spacing", 4,
                   "--cases-per-site", 2)  # fmt: skip
    assert run.code == 0, run
    return folder / "data"


def _dataset(data: Path, folder: Path, change: Callable[[dict[str, Any], Path], None]) -> Path:
    """A copy of the dataset.json (absolute paths) in `folder`, changed by `change(contents, folder)`."""
    contents = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    for item in contents["training"]:
        item["image"] = [str(data / p) for p in item["image"]]
        item["label"] = str(data / item["label"])
    folder.mkdir(parents=True)
    change(contents, folder)
    (folder / "dataset.json").write_text(json.dumps(contents), encoding="utf-8")
    return folder / "dataset.json"


def _moved_label(spacing: float = 1.0, shift: float = 0.0) -> Callable[[dict[str, Any], Path], None]:
    """The first case's label with its image's size, its spacing scaled and its origin shifted (mm)."""

    def change(contents: dict[str, Any], folder: Path) -> None:
        case = contents["training"][0]
        label = sitk.ReadImage(case["label"])
        label.SetSpacing([s * spacing for s in label.GetSpacing()])
        label.SetOrigin([o + shift for o in label.GetOrigin()])
        sitk.WriteImage(label, str(folder / "moved.nii.gz"))
        case["label"] = str(folder / "moved.nii.gz")

    return change


def _listed_twice(contents: dict[str, Any], _folder: Path) -> None:
    contents["training"].append(copy.deepcopy(contents["training"][0]))


def _channel_names_repeated(contents: dict[str, Any], _folder: Path) -> None:
    contents["channel_names"] = contents["modality"] = {"0": "FLAIR", "1": "FLAIR", "2": "FLAIR"}


def _case_channels_repeated(contents: dict[str, Any], _folder: Path) -> None:
    case = contents["training"][0]
    case["image"], case["channels"] = case["image"] * 3, ["FLAIR"] * 3


def _site(name: str) -> Callable[[dict[str, Any], Path], None]:
    def change(contents: dict[str, Any], _folder: Path) -> None:
        contents["training"][0]["site"] = name

    return change


def _dataset_named(name: str) -> Callable[[dict[str, Any], Path], None]:
    """No case names its site, so each case's site is the dataset's name."""

    def change(contents: dict[str, Any], _folder: Path) -> None:
        for item in contents["training"]:
            del item["site"]
        contents["name"] = name
        del contents["sites"]

    return change


def _site_without_cases(contents: dict[str, Any], _folder: Path) -> None:
    contents["sites"].append({**contents["sites"][0], "name": "gamma"})


MOVED = "training[0]: label map moved.nii.gz has its image's size but another"
ORIGIN, SPACING = f"{MOVED} origin", f"{MOVED} spacing"
DEFECTS = [
    pytest.param(
        _listed_twice, "training[4] (alpha_000): alpha_000_0000.nii.gz is also a file of", id="a case listed twice"
    ),
    pytest.param(_moved_label(shift=40.0), ORIGIN, id="a label with the image's size but another origin"),
    pytest.param(_moved_label(spacing=1.5), SPACING, id="a label with the image's size but another spacing"),
    pytest.param(
        _channel_names_repeated,
        "channel 'FLAIR' is named twice in channel_names",
        id="channel_names FLAIR, FLAIR, FLAIR",
    ),
    pytest.param(
        _case_channels_repeated,
        "training[0]: channel 'FLAIR' is listed twice in channels",
        id="a case with channels FLAIR, FLAIR, FLAIR",
    ),
    pytest.param(_site(".."), "training[0] (alpha_000): site '..': use 1-64 letters", id="site .."),
    pytest.param(
        _site("../../evil/a"), "training[0] (alpha_000): site '../../evil/a': use 1-64 letters", id="site ../../evil/a"
    ),
    pytest.param(
        _dataset_named(".."),
        "training[0] (alpha_000): site '..' (the dataset's name",
        id="no site given and the dataset named ..",
    ),
    pytest.param(
        _site_without_cases,
        "site 'gamma' is listed in \"sites\" but no training case belongs to it",
        id="a listed site with zero cases",
    ),
]


@pytest.mark.bad_input("train, evaluate, diagnose: a dataset.json", words="words")
@pytest.mark.parametrize(("change", "words"), DEFECTS)
def test_dataset_defect_is_refused(
    data: Path, tiny_bundle: Path, tmp_path: Path, change: Callable[[dict[str, Any], Path], None], words: str
) -> None:
    """Refused in one line (exit 2) naming the dataset.json, the case or site and the problem; nothing is written."""
    dataset = _dataset(data, tmp_path / "bad", change)
    commands = {
        "train": ["train", "--data", dataset, "--out", tmp_path / "model", *TINY_ARGS],
        "evaluate": ["evaluate", "--model", tiny_bundle, "--data", dataset, "--out", tmp_path / "report.json"],
        "diagnose": ["diagnose", "--data", dataset, "--out", tmp_path / "report"],
    }
    for name, args in commands.items():
        run = run_main(*args)
        line = assert_one_line_error(run)
        assert run.code == 2 and line.startswith(f"uharmony: error: {dataset}: ") and words in line, (name, line)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"], name


def test_label_grid_check_tolerates_header_rounding_only(data: Path, tmp_path: Path) -> None:
    """A label origin off by float rounding (1e-4 mm) is planned as usual; half a voxel (2 mm) is refused."""
    rounded = _dataset(data, tmp_path / "rounded", _moved_label(shift=1e-4))
    plan = plan_training([rounded], val_fraction=0.0, seed=0)
    assert len(plan.cases) == 4 and [s.name for s in plan.sites] == ["alpha", "beta"]
    shifted = _dataset(data, tmp_path / "shifted", _moved_label(shift=2.0))
    run = run_main("train", "--data", shifted, "--out", tmp_path / "out", *TINY_ARGS)
    assert run.code == 2 and ORIGIN in assert_one_line_error(run)
