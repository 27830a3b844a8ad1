"""`uharmony segment` as Slicer runs it: the JSON progress stream, and the default precision path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import LABELS, BundleFactory, CliRun, assert_one_line_error, run_main, run_subprocess, write_volume_file

EVENTS = {"progress", "log", "result", "error"}


def _events(run: CliRun) -> list[dict[str, Any]]:
    """Every stdout line is one JSON object with a known "event"."""
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert events, run.stderr
    for e in events:
        assert isinstance(e, dict) and e["event"] in EVENTS, e
    return events


def _check_progress(events: list[dict[str, Any]], totals: dict[str, int]) -> None:
    """Each stage counts strictly up to its expected total (the segment stage: windows x mirrored passes)."""
    progress = [e for e in events if e["event"] == "progress"]
    assert {e["stage"] for e in progress} == set(totals)
    for stage, windows in totals.items():
        steps = [e for e in progress if e["stage"] == stage]
        for e in steps:
            assert 0 < e["done"] <= e["total"]
        assert [e["done"] for e in steps] == sorted({e["done"] for e in steps})  # strictly increasing
        assert steps[-1]["done"] == steps[-1]["total"] == windows


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1.5 mm case large enough for several sliding windows."""
    folder = tmp_path_factory.mktemp("case")
    return write_volume_file(folder / "case.nii.gz", size=(32, 28, 24), spacing=(1.5, 1.5, 1.5), origin=(-5, 3, 9))


def test_json_stream_real_process(case: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    """A real `python -m UHarmonyLib segment --progress json` prints only JSON events, ending in the result."""
    out = tmp_path / "seg.seg.nrrd"
    run = run_subprocess(
        "segment",
        "--model",
        tiny_bundle,
        case,
        "--out",
        out,
        "--progress",
        "json",
        "--device",
        "cpu",
        "--mirror-passes",
        "4",
    )
    assert run.code == 0, run.stderr
    assert run.stderr == ""
    events = _events(run)
    assert events[-1]["event"] == "result"
    assert [e["event"] for e in events].count("result") == 1
    assert not any(e["event"] == "error" for e in events)
    result = events[-1]
    assert result["windows"] > 1
    assert result["passes"] == 4  # as is, then flipped along each of 3 axes
    _check_progress(events, {"gate": result["windows"], "segment": result["windows"] * 4})
    assert result["outputs"] == {"segmentation": str(out)}
    assert result["gate"]["windows"] == result["windows"]
    # the reported lesion volumes are the label counts times the voxel volume
    labels = sitk.ReadImage(str(out))
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=len(LABELS) + 1)
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000
    assert result["volumes_ml"] == {
        lab["name"]: pytest.approx(counts[lab["value"]] * voxel_ml, abs=1e-3) for lab in LABELS
    }


def test_json_stream_with_named_site(case: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    """With --site the gate stage is skipped; with --no-mirror the segment stage is one pass over the windows."""
    out = tmp_path / "s.nrrd"
    run = run_main(
        "segment", "--model", tiny_bundle, case, "--out", out, "--site", "gamma", "--progress", "json", "--no-mirror"
    )
    assert run.code == 0, run.stderr
    events = _events(run)
    assert events[-1]["event"] == "result" and events[-1]["passes"] == 1
    _check_progress(events, {"segment": events[-1]["windows"]})
    assert events[-1]["gate"]["site_given"] is True


def test_json_stream_ends_in_error_real_process(tiny_bundle: Path, tmp_path: Path) -> None:
    """A bad input in a real process: the stream ends in one error event, exit code 2, one stderr line, no output."""
    flat = write_volume_file(tmp_path / "flat.nrrd", array_zyx=np.zeros((16, 20, 24), np.float32))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    run = run_subprocess("segment", "--model", tiny_bundle, flat, "--out", out_dir / "seg.nrrd", "--progress", "json")
    line = assert_one_line_error(run)
    assert run.code == 2
    events = _events(run)
    assert events[-1] == {"event": "error", "message": line.removeprefix("uharmony: error: ")}
    assert "volume is constant" in events[-1]["message"]
    assert [e["event"] for e in events].count("error") == 1
    assert not any(e["event"] == "result" for e in events)
    assert list(out_dir.iterdir()) == []


def _segment(bundle: Path, case: Path, out: Path, precision: str) -> tuple[np.ndarray, str]:
    run = run_main(
        "segment", "--model", bundle, case, "--out", out, "--device", "cpu", "--precision", precision,
        "--progress", "json",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out))), _events(run)[-1]["precision"]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def test_bfloat16_agrees_with_float32(case: Path, bundle_factory: BundleFactory, tmp_path: Path) -> None:
    """CPU bfloat16 autocast segments like float32 (foreground Dice >= 0.9); auto equals the precision it reports."""
    bundle = bundle_factory(seed=3)  # a random model whose foreground is neither tiny nor nearly everything
    f32, p32 = _segment(bundle, case, tmp_path / "f32.nrrd", "float32")
    bf16, pbf = _segment(bundle, case, tmp_path / "bf16.nrrd", "bfloat16")
    assert (p32, pbf) == ("float32", "bfloat16")
    fg = f32 > 0
    assert 0.1 < fg.mean() < 0.9  # a non-trivial segmentation to compare
    assert _dice(fg, bf16 > 0) >= 0.9
    assert np.mean(f32 == bf16) >= 0.97  # per-voxel label agreement, lesion classes included
    auto, pauto = _segment(bundle, case, tmp_path / "auto.nrrd", "auto")
    assert pauto in ("float32", "bfloat16")
    np.testing.assert_array_equal(auto, f32 if pauto == "float32" else bf16)


def test_absent_channel_is_given_as_zeros(case: Path, tmp_path: Path, two_channel_bundle: Path) -> None:
    """'-' marks a channel the case lacks: the same result as the library with an all-zero volume."""
    from UHarmonyLib.inference.engine import segment_volumes
    from UHarmonyLib.model.weights import load_bundle

    bundle = two_channel_bundle
    run = run_main("segment", "--model", bundle, case, "-", "--out", tmp_path / "seg.nii.gz")
    assert run.code == 0, run
    assert "channel FLAIR absent: given to the model as zeros" in run.stderr
    image = sitk.Cast(sitk.ReadImage(str(case)), sitk.sitkFloat32)
    zeros = sitk.Image(image.GetSize(), sitk.sitkFloat32)
    zeros.CopyInformation(image)
    expected = segment_volumes(load_bundle(bundle), [image, zeros]).labels
    got = sitk.ReadImage(str(tmp_path / "seg.nii.gz"))
    assert np.array_equal(sitk.GetArrayViewFromImage(got), sitk.GetArrayViewFromImage(expected))
    flipped = run_main("segment", "--model", bundle, "-", case, "--out", tmp_path / "seg2.nii.gz")
    assert flipped.code == 0 and "channel T1 absent" in flipped.stderr
    refused = run_main("segment", "--model", bundle, "-", "-", "--out", tmp_path / "none.nii.gz")
    assert "every channel is marked absent" in assert_one_line_error(refused)
    assert not (tmp_path / "none.nii.gz").exists()
