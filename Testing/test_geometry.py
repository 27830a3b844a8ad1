"""Exact geometry round trip through `uharmony segment`, its optional outputs, and the model-space axis convention."""

from __future__ import annotations

import json
import locale
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import (
    LABELS,
    OBLIQUE,
    PERMUTED_FLIPPED,
    SITES,
    BundleFactory,
    assert_one_line_error,
    assert_same_grid,
    blob_array,
    make_image,
    model_space_spacing,
    run_main,
    write_volume_file,
)
from monai.transforms import EnsureChannelFirst, LoadImage, Orientation

from UHarmonyLib.files.volumes import read_volume
from UHarmonyLib.inference.engine import segment_volumes
from UHarmonyLib.inference.preprocessing import ModelSpace, stack_channels
from UHarmonyLib.model.card import read_card
from UHarmonyLib.model.weights import load_bundle

SIZE = (24, 20, 16)
SPACING = (0.9, 1.3, 2.1)
ORIGIN = (12.5, -30.25, 7.75)
DIRECTIONS = {"permuted": PERMUTED_FLIPPED, "oblique": OBLIQUE}
INPUT_SUFFIX = {"permuted": ".nrrd", "oblique": ".nii.gz"}
RESAMPLED_SPACING = (1.5, 1.5, 1.5)
SITE_NAMES = [s["name"] for s in SITES]


def _bundle(bundle_factory: BundleFactory, path: str, direction: str) -> Path:
    """The resampling model (1.5 mm) or the model whose spacing is the volume's after reorientation."""
    if path == "resampled":
        return bundle_factory(RESAMPLED_SPACING)
    return bundle_factory(model_space_spacing(SPACING, DIRECTIONS[direction]))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One rotated, anisotropic, off-origin input volume per direction."""
    folder = tmp_path_factory.mktemp("inputs")
    return {
        name: write_volume_file(
            folder / f"{name}{INPUT_SUFFIX[name]}", SIZE, SPACING, ORIGIN, direction, seed=len(name)
        )
        for name, direction in DIRECTIONS.items()
    }


def _segment(bundle: Path, volume: Path, out: Path, *extra: Any) -> dict[str, Any]:
    """Run `uharmony segment --progress json` in-process; returns the result event."""
    run = run_main("segment", "--model", bundle, volume, "--out", out, "--device", "cpu", "--progress", "json", *extra)
    assert run.code == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert events[-1]["event"] == "result"
    return events[-1]


@pytest.mark.parametrize("path", ["resampled", "exact"])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_fixture_takes_the_intended_path(
    path: str, direction: str, inputs: dict[str, Path], bundle_factory: BundleFactory
) -> None:
    """The test models really exercise the resampling and the interpolation-free paths."""
    card = read_card(_bundle(bundle_factory, path, direction))
    space = ModelSpace.for_image(read_volume(inputs[direction]), card["preprocessing"])
    assert space.resampled == (path == "resampled")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".seg.nrrd"])
@pytest.mark.parametrize("path", ["resampled", "exact"])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_label_map_on_the_input_grid(
    suffix: str, path: str, direction: str, inputs: dict[str, Path], bundle_factory: BundleFactory, tmp_path: Path
) -> None:
    """The label map has the input's size, spacing, origin and direction (1e-5) in every output format."""
    out = tmp_path / f"seg{suffix}"
    _segment(_bundle(bundle_factory, path, direction), inputs[direction], out)
    labels = sitk.ReadImage(str(out))
    assert_same_grid(labels, sitk.ReadImage(str(inputs[direction])))
    assert labels.GetNumberOfComponentsPerPixel() == 1
    assert labels.GetPixelID() == sitk.sitkUInt8
    values = set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist())
    assert values <= {0, *(lab["value"] for lab in LABELS)}
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temp files left


@pytest.fixture(scope="module", params=["resampled", "exact"])
def full_run(
    request: pytest.FixtureRequest,
    inputs: dict[str, Path],
    bundle_factory: BundleFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """One oblique case segmented with every optional output."""
    folder = tmp_path_factory.mktemp(f"full-{request.param}")
    out = {
        "seg": folder / "seg.seg.nrrd",
        "probs": folder / "probs.nrrd",
        "gate_map": folder / "gate.nii.gz",
        "gate_json": folder / "gate.json",
    }
    result = _segment(
        _bundle(bundle_factory, request.param, "oblique"),
        inputs["oblique"],
        out["seg"],
        "--probabilities",
        out["probs"],
        "--gate-map",
        out["gate_map"],
        "--gate-json",
        out["gate_json"],
    )
    return {"result": result, "input": sitk.ReadImage(str(inputs["oblique"])), **out}


def test_seg_nrrd_carries_slicer_metadata(full_run: dict[str, Any]) -> None:
    """The .seg.nrrd has Slicer's segment name, color and label value for every label of the card."""
    seg = sitk.ReadImage(str(full_run["seg"]))
    assert_same_grid(seg, full_run["input"])
    for i, lab in enumerate(LABELS):
        assert seg.GetMetaData(f"Segment{i}_Name") == lab["name"]
        assert seg.GetMetaData(f"Segment{i}_LabelValue") == str(lab["value"])
        rgb = [float(v) for v in seg.GetMetaData(f"Segment{i}_Color").split()]
        expected = [int(lab["color"][k : k + 2], 16) / 255 for k in (1, 3, 5)]
        np.testing.assert_allclose(rgb, expected, atol=1e-5)
    assert seg.GetMetaData("Segmentation_MasterRepresentation") == "Binary labelmap"


def test_probabilities_on_input_grid_sum_to_one(full_run: dict[str, Any]) -> None:
    """--probabilities: a vector image on the input grid, one component per class, summing to 1 in every voxel."""
    probs = sitk.ReadImage(str(full_run["probs"]))
    assert_same_grid(probs, full_run["input"])
    assert probs.GetNumberOfComponentsPerPixel() == len(LABELS) + 1
    p = sitk.GetArrayFromImage(probs)
    assert p.min() >= -1e-6 and p.max() <= 1 + 1e-6
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-3)
    # the label map is the most probable class
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(full_run["seg"])))
    values = np.array([0] + [lab["value"] for lab in LABELS])
    assert np.mean(values[p.argmax(-1)] == labels) > 0.999


def test_gate_map_on_input_grid(full_run: dict[str, Any]) -> None:
    """--gate-map: a label volume on the input grid whose values are 1-based site indices (1..S) everywhere."""
    gate_map = sitk.ReadImage(str(full_run["gate_map"]))
    assert_same_grid(gate_map, full_run["input"])
    g = sitk.GetArrayFromImage(gate_map)
    assert g.min() >= 1 and g.max() <= len(SITES)


def test_gate_json_matches_result(full_run: dict[str, Any]) -> None:
    """--gate-json holds sites/chosen/entropy/familiar, probabilities summing to 1, as in the result event."""
    gate = json.loads(full_run["gate_json"].read_text())
    assert {"sites", "chosen", "entropy", "familiar"} <= set(gate)
    assert list(gate["sites"]) == SITE_NAMES
    assert sum(gate["sites"].values()) == pytest.approx(1.0, abs=1e-5)
    assert gate["chosen"] == max(gate["sites"], key=gate["sites"].get)
    assert 0.0 <= gate["entropy"] <= 1.0
    assert gate["site_given"] is False
    assert gate == full_run["result"]["gate"]
    assert full_run["result"]["outputs"] == {
        "segmentation": str(full_run["seg"]),
        "gate_json": str(full_run["gate_json"]),
        "gate_map": str(full_run["gate_map"]),
        "probabilities": str(full_run["probs"]),
    }


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_exact_path_is_interpolation_free(
    direction: str, inputs: dict[str, Path], bundle_factory: BundleFactory, tmp_path: Path
) -> None:
    """At the model's spacing, segmenting a rotated volume equals segmenting its reoriented copy, voxel for voxel."""
    bundle = _bundle(bundle_factory, "exact", direction)
    image = sitk.ReadImage(str(inputs[direction]))
    card = read_card(bundle)
    space = ModelSpace.for_image(image, card["preprocessing"])
    round_trip = space.to_input(space.to_model(sitk.Cast(image, sitk.sitkFloat32)), sitk.sitkLinear)
    assert_same_grid(round_trip, image, tol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(round_trip), sitk.GetArrayFromImage(image))

    oriented = tmp_path / "oriented.nrrd"
    sitk.WriteImage(sitk.DICOMOrient(image, card["preprocessing"]["orientation"]), str(oriented))
    _segment(bundle, inputs[direction], tmp_path / "a.nrrd")
    _segment(bundle, oriented, tmp_path / "b.nrrd")
    a = sitk.DICOMOrient(sitk.ReadImage(str(tmp_path / "a.nrrd")), card["preprocessing"]["orientation"])
    b = sitk.ReadImage(str(tmp_path / "b.nrrd"))
    assert len(np.unique(sitk.GetArrayViewFromImage(b))) > 1  # a non-trivial segmentation
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_model_space_array_matches_monai(direction: str, bundle_factory: BundleFactory, tmp_path: Path) -> None:
    """The model-space array and grid equal MONAI's LoadImage(Nibabel) + EnsureChannelFirst + Orientation('RAS')."""
    path = write_volume_file(tmp_path / "case.nii.gz", SIZE, SPACING, ORIGIN, DIRECTIONS[direction], seed=3)
    card = read_card(_bundle(bundle_factory, "exact", direction))
    space = ModelSpace.for_image(read_volume(path), card["preprocessing"])
    assert not space.resampled
    ours = stack_channels(space, [read_volume(path)])

    data = LoadImage(reader="NibabelReader", image_only=True)(str(path))
    data = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(EnsureChannelFirst()(data))
    theirs = np.asarray(data)
    assert ours.shape == theirs.shape == (1, *space.shape)
    np.testing.assert_array_equal(ours, theirs.astype(np.float32))

    # the same grid: MONAI's RAS affine is the model grid's LPS geometry with x and y negated
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    grid = space.grid
    direction_lps = np.reshape(grid.GetDirection(), (3, 3))
    affine = np.asarray(data.affine)
    np.testing.assert_allclose(affine[:3, :3], lps_to_ras @ direction_lps @ np.diag(grid.GetSpacing()), atol=1e-4)
    np.testing.assert_allclose(affine[:3, 3], lps_to_ras @ np.asarray(grid.GetOrigin()), atol=1e-4)


@pytest.fixture(scope="module")
def site_runs(
    inputs: dict[str, Path], bundle_factory: BundleFactory, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """The oblique case segmented with --site alpha and --site beta."""
    folder = tmp_path_factory.mktemp("sites")
    bundle = _bundle(bundle_factory, "resampled", "oblique")
    runs = {}
    for site in ("alpha", "beta"):
        seg, gate = folder / f"{site}.nii.gz", folder / f"{site}.json"
        result = _segment(bundle, inputs["oblique"], seg, "--site", site, "--gate-json", gate)
        runs[site] = {"result": result, "labels": sitk.GetArrayFromImage(sitk.ReadImage(str(seg))), "gate": gate}
    return runs


def test_named_site_is_one_hot(site_runs: dict[str, Any]) -> None:
    """--site NAME gives site_given true, one-hot probabilities, zero entropy, and that site as chosen."""
    for site, run in site_runs.items():
        gate = json.loads(run["gate"].read_text())
        assert gate["site_given"] is True
        assert gate["sites"] == {s: (1.0 if s == site else 0.0) for s in SITE_NAMES}
        assert gate["chosen"] == site
        assert gate["entropy"] == 0.0
        assert run["result"]["gate"] == gate


def test_named_site_changes_the_segmentation(site_runs: dict[str, Any]) -> None:
    """The named site's parameters are used: two sites with different parameters segment differently."""
    assert not np.array_equal(site_runs["alpha"]["labels"], site_runs["beta"]["labels"])


def test_unknown_site_and_site_with_gate_map_refused(
    inputs: dict[str, Path], bundle_factory: BundleFactory, tmp_path: Path
) -> None:
    """An unknown --site, or --gate-map together with --site, is refused with one line and no output."""
    bundle = _bundle(bundle_factory, "resampled", "oblique")
    run = run_main("segment", "--model", bundle, inputs["oblique"], "--out", tmp_path / "s.nii.gz", "--site", "zeta")
    line = assert_one_line_error(run)
    assert "unknown site 'zeta'" in line and "alpha, beta, gamma" in line
    run = run_main(
        "segment", "--model", bundle, inputs["oblique"], "--out", tmp_path / "s.nii.gz",
        "--site", "beta", "--gate-map", tmp_path / "g.nii.gz", "--progress", "json",
    )  # fmt: skip
    assert "--gate-map" in assert_one_line_error(run)
    assert json.loads(run.stdout.splitlines()[-1])["event"] == "error"
    assert list(tmp_path.iterdir()) == []


def _write_dicom_series(image: sitk.Image, folder: Path) -> None:
    """Write a 3-D int16 image as a DICOM series, one file per slice (SimpleITK's documented recipe).

    GDCM's writer leaves the process in the C locale; restored here, or every later test in this
    process would read and decode text as ASCII (torch's own templates, child processes' output)."""
    ctype = locale.setlocale(locale.LC_CTYPE)
    try:
        _write_slices(image, folder)
    finally:
        locale.setlocale(locale.LC_CTYPE, ctype)


def _write_slices(image: sitk.Image, folder: Path) -> None:
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    date, clock = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    d = image.GetDirection()
    series = [
        ("0008|0031", clock),
        ("0008|0021", date),
        ("0008|0008", "DERIVED\\SECONDARY"),
        ("0020|000d", f"1.2.826.0.1.3680043.2.1125.{date}.2{clock}"),
        ("0020|000e", f"1.2.826.0.1.3680043.2.1125.{date}.1{clock}"),
        ("0020|0037", "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))),
        ("0008|103e", "uharmony test series"),
        ("0008|0060", "MR"),
        ("0010|0010", "Phantom^Blob"),
    ]
    for i in range(image.GetDepth()):
        piece = image[:, :, i]
        for tag, value in series:
            piece.SetMetaData(tag, value)
        piece.SetMetaData("0008|0012", date)
        piece.SetMetaData("0008|0013", clock)
        piece.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, i))))
        piece.SetMetaData("0020|0013", str(i + 1))
        piece.SetMetaData("0018|0050", str(image.GetSpacing()[2]))
        writer.SetFileName(str(folder / f"slice{i:03d}.dcm"))
        writer.Execute(piece)


def test_dicom_series_input(tiny_bundle: Path, tmp_path: Path) -> None:
    """A folder holding one DICOM series is a valid input; the label map lies on the series' grid."""
    array = (blob_array((20, 18, 12), seed=4) * 10).astype(np.int16)
    image = make_image(array, (1.1, 0.9, 2.0), (-20.0, 15.5, -40.0), OBLIQUE)
    _write_dicom_series(image, tmp_path / "series")
    read = read_volume(tmp_path / "series")
    assert_same_grid(read, image)  # the series really holds this volume
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), array.astype(np.float32))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _segment(tiny_bundle, tmp_path / "series", out_dir / "seg.nrrd")
    assert result["windows"] > 0
    labels = sitk.ReadImage(str(out_dir / "seg.nrrd"))
    assert_same_grid(labels, read)
    assert [p.name for p in out_dir.iterdir()] == ["seg.nrrd"]


def test_downsampling_blurs_like_a_coarser_acquisition() -> None:
    """A 1 mm scan going to a 2 mm model is low-passed first, so 1 mm noise is not passed through unchanged."""
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.standard_normal((40, 40, 40)).astype(np.float32))
    preprocessing = {"orientation": "RAS", "spacing": [2.0, 2.0, 2.0], "intensity": {"method": "zscore"}}
    coarse = ModelSpace.for_image(image, preprocessing).to_model(image)
    assert coarse.shape == (20, 20, 20)
    assert coarse.std() < 0.6  # white noise of std 1 averaged over about a 2 mm kernel
    same = {**preprocessing, "spacing": [1.0, 1.0, 1.0]}
    assert ModelSpace.for_image(image, same).to_model(image).std() > 0.95  # no resampling: untouched


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.5, 1.5, 1.5)], ids=["resampled", "model-grid"])
def test_labels_are_the_argmax_of_the_probabilities_on_the_input_grid(
    bundle_factory: BundleFactory, spacing: tuple[float, ...]
) -> None:
    """Labels made one class at a time (to keep memory flat) are exactly the argmax of the full probabilities."""
    bundle = load_bundle(bundle_factory())
    image = make_image(blob_array((40, 34, 28), seed=3), spacing=spacing, direction=PERMUTED_FLIPPED)
    result = segment_volumes(bundle, [image], want_probabilities=True, passes=1)
    assert result.probabilities is not None
    probs = sitk.GetArrayFromImage(result.probabilities)
    values = np.array([0] + [lab["value"] for lab in LABELS])
    expected = values[probs.argmax(-1)]
    assert np.unique(expected).size > 1  # more than one class, or the comparison says little
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), expected)
    assert_same_grid(result.labels, image)


def test_a_case_larger_than_free_memory_is_warned_about(
    tiny_bundle: Path, volume_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before segmenting, the need (bytes per input voxel, measured by benchmarks/memory.py) is set against Linux's
    MemAvailable; a case that cannot fit gets a warning naming both, and the run goes on."""
    import UHarmonyLib.inference.engine as engine

    free = engine.available_memory()
    assert free is not None and free > 0  # this is Linux
    monkeypatch.setitem(engine.BYTES_PER_VOXEL, False, free)  # as if each voxel needed all of it
    run = run_main("segment", "--model", tiny_bundle, volume_file, "--out", tmp_path / "s.nrrd", "--progress", "json")
    assert run.code == 0, run
    warnings = [e for e in map(json.loads, run.stdout.splitlines()) if e.get("level") == "warning"]
    assert len(warnings) == 1 and "24 x 20 x 16 case needs about" in warnings[0]["message"]
    assert "GB are available: it may fail or swap" in warnings[0]["message"]
