"""Cropping to the foreground: windows run only over the head, and the output keeps the input's grid."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import (
    CHANNELS,
    LABELS,
    PATCH,
    SITES,
    BundleFactory,
    assert_same_grid,
    blob_array,
    make_image,
    run_main,
    tiny_net,
    write_volume_file,
)

from UHarmonyLib.inference.crop import MARGIN, foreground_box
from UHarmonyLib.inference.engine import segment_volumes
from UHarmonyLib.inference.windows import window_slices
from UHarmonyLib.model.weights import load_bundle, make_card, save_bundle
from UHarmonyLib.progress import JsonReporter

SPACING = (1.5, 1.5, 1.5)  # the tiny bundle's: no resampling, so arrays compare voxel for voxel
OVERLAP = 0.25
HEAD = (24, 20, 16)  # x, y, z of the blob volume
BORDER = 10  # zeros around it in the "alone" volume: room for the margin and the widening to whole windows
FIELD = (80, 70, 60)  # the larger zero field it is embedded in
OFFSET = (23, 17, 13)  # where the alone volume's first voxel lands in the field (x, y, z)


def _head_alone() -> np.ndarray:
    """(z, y, x) blob volume surrounded by BORDER zero voxels."""
    return np.pad(blob_array(HEAD, seed=11), BORDER)


def _inside(field_zyx: np.ndarray, shape_zyx: tuple[int, ...]) -> np.ndarray:
    (x, y, z), (nz, ny, nx) = OFFSET, shape_zyx
    return field_zyx[z : z + nz, y : y + ny, x : x + nx]


def _segment(bundle: Path, image: Path, out: Path, *extra: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run = run_main("segment", "--model", bundle, image, "--out", out, "--progress", "json", *extra)
    assert run.code == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    return next(e for e in events if e["event"] == "result"), [e for e in events if e["event"] == "progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, bundle_factory: BundleFactory) -> dict[str, Any]:
    """The head volume alone and embedded in a zero field (files), each segmented by the CLI with two passes."""
    folder = tmp_path_factory.mktemp("crop")
    alone_zyx = _head_alone()
    field_zyx = np.zeros(FIELD[::-1], np.float32)
    _inside(field_zyx, alone_zyx.shape)[...] = alone_zyx
    origin = np.array([3.0, -7.0, 11.0])
    alone = write_volume_file(folder / "alone.nrrd", spacing=SPACING, origin=origin, array_zyx=alone_zyx)
    field = write_volume_file(
        folder / "field.nrrd", spacing=SPACING, origin=origin - np.array(OFFSET) * SPACING, array_zyx=field_zyx
    )
    bundle = bundle_factory()
    out: dict[str, Any] = {"alone_file": alone, "field_file": field}
    for name, image in (("alone", alone), ("field", field)):
        gate = folder / f"{name}-gate.nrrd"
        result, progress = _segment(
            bundle, image, folder / f"{name}-labels.nrrd", "--mirror-passes", "2", "--gate-map", gate
        )
        out[name] = {
            "result": result,
            "progress": progress,
            "labels": sitk.ReadImage(str(folder / f"{name}-labels.nrrd")),
            "gate_map": sitk.ReadImage(str(gate)),
        }
    return out


def test_a_head_in_a_larger_zero_field_gets_the_same_labels(runs: dict[str, Any]) -> None:
    """Same head, same windows over it, same labels; the field's voxels outside the head's box are background."""
    alone = sitk.GetArrayFromImage(runs["alone"]["labels"])
    field = sitk.GetArrayFromImage(runs["field"]["labels"])
    assert np.unique(alone).size > 1  # the tiny random network labels something, or the comparison says little
    np.testing.assert_array_equal(_inside(field, alone.shape), alone)
    outside = np.ones(field.shape, bool)
    _inside(outside, alone.shape)[...] = False
    assert not field[outside].any()
    assert runs["field"]["result"]["gate"] == runs["alone"]["result"]["gate"]  # the gate saw the same windows


def test_the_output_keeps_the_input_grid(runs: dict[str, Any]) -> None:
    for name in ("alone", "field"):
        image = sitk.ReadImage(str(runs[f"{name}_file"]))
        assert_same_grid(runs[name]["labels"], image)
        assert_same_grid(runs[name]["gate_map"], image)


def test_fewer_windows_run_and_progress_counts_them(runs: dict[str, Any]) -> None:
    """The engine reports the windows of the head's box, not of the field; its progress events count exactly those."""
    field = runs["field"]["result"]
    every = len(window_slices(FIELD, [PATCH] * 3, OVERLAP))  # the tiny card's patch and overlap, over the whole field
    assert field["windows"] == runs["alone"]["result"]["windows"] < every // 10
    assert field["passes"] == 2
    for stage, total in (("gate", field["windows"]), ("segment", field["windows"] * 2)):
        steps = [e for e in runs["field"]["progress"] if e["stage"] == stage]
        assert steps[-1]["done"] == steps[-1]["total"] == total


def test_gate_map_outside_the_box_holds_the_case_level_choice(runs: dict[str, Any]) -> None:
    """Every voxel still names a site (1..S); where no window ran, the site the case was segmented with."""
    g = sitk.GetArrayFromImage(runs["field"]["gate_map"])
    chosen = [s["name"] for s in SITES].index(runs["field"]["result"]["gate"]["chosen"]) + 1
    assert g.min() >= 1 and g.max() <= len(SITES)
    assert g[0, 0, 0] == g[-1, -1, -1] == chosen


def test_box_covers_every_channel_with_margin_and_whole_windows() -> None:
    """The union of all channels' non-zero voxels, MARGIN wider, widened to what its windows cover anyway."""
    channels = np.zeros((2, 90, 60, 40), np.float32)
    channels[0, 30:40, 20:25, 10:30] = 1.0
    channels[1, 50:61, 22:24, 12:14] = -2.0  # negative intensities are foreground too
    box = foreground_box(channels, [16, 16, 16], OVERLAP)
    assert box.shape == (90, 60, 40)
    start, stop = [s.start for s in box.slices], [s.stop for s in box.slices]
    assert all(a <= f - MARGIN for a, f in zip(start, (30, 20, 10)))
    assert all(b >= f + MARGIN for b, f in zip(stop, (61, 25, 30)))
    # x: 31 + 2 * MARGIN = 39 voxels need 3 windows of 16 every 12, which cover 40
    assert box.size[0] == 40 and len(window_slices([box.size[0]], [16], OVERLAP)) == 3
    # y: 5 + 2 * MARGIN = 13 fit one window, which takes 16
    assert box.size[1] == 16


def test_box_stays_inside_the_volume_and_empty_means_whole() -> None:
    channels = np.zeros((1, 50, 50, 12), np.float32)
    channels[0, 0:3, 45:50, 4:6] = 5.0  # at the volume's edges; z shorter than a window
    box = foreground_box(channels, [16, 16, 16], OVERLAP)
    assert [(s.start, s.stop) for s in box.slices] == [(0, 16), (34, 50), (0, 12)]
    empty = foreground_box(np.zeros((1, 50, 40, 30), np.float32), [16, 16, 16], OVERLAP)
    assert empty.whole


def test_box_is_the_union_of_the_channels(two_channel_bundle: Path) -> None:
    """A channel whose head lies elsewhere widens the box: windows cover every channel's non-zero voxels."""
    bundle = load_bundle(two_channel_bundle)
    left, right = np.zeros(FIELD[::-1], np.float32), np.zeros(FIELD[::-1], np.float32)
    left[10:40, 10:50, 5:30] = blob_array((25, 40, 30), seed=13)
    right[10:40, 10:50, 50:75] = blob_array((25, 40, 30), seed=14)
    alone = segment_volumes(bundle, [make_image(left, SPACING), make_image(right * 0, SPACING)], passes=1)
    both = segment_volumes(bundle, [make_image(left, SPACING), make_image(right, SPACING)], passes=1)
    assert alone.windows < both.windows < len(window_slices(FIELD, [PATCH] * 3, OVERLAP))
    labels = sitk.GetArrayFromImage(both.labels)
    assert labels[10:40, 10:50, 50:75].any() and labels[10:40, 10:50, 5:30].any()  # both heads were segmented


def test_an_all_zero_volume_runs_every_window(bundle_factory: BundleFactory, tmp_path: Path) -> None:
    """Nothing to crop to: the whole volume runs, as before cropping existed (the CLI refuses such a file)."""
    path = write_volume_file(tmp_path / "zeros.nrrd", spacing=SPACING, array_zyx=np.zeros((30, 34, 40), np.float32))
    image = sitk.ReadImage(str(path))
    result = segment_volumes(load_bundle(bundle_factory()), [image], passes=1)
    assert result.windows == len(window_slices((40, 34, 30), [PATCH] * 3, OVERLAP))
    assert_same_grid(result.labels, image)


def test_crop_is_decided_before_normalization(tmp_path: Path) -> None:
    """A z-score over every voxel moves the background off 0; the box still comes from the raw zeros."""
    net = tiny_net()
    card = make_card(
        net,
        name="allvoxels",
        version=1,
        channels=CHANNELS,
        labels=LABELS,
        sites=SITES,
        preprocessing={"spacing": list(SPACING), "intensity": {"method": "zscore", "nonzero": False}},
        inference={"patch_size": [PATCH] * 3, "overlap": OVERLAP},
    )
    bundle = load_bundle(save_bundle(net, card, tmp_path / "allvoxels-v1"))
    field = np.zeros(FIELD[::-1], np.float32)
    _inside(field, _head_alone().shape)[...] = _head_alone()
    stream = io.StringIO()
    result = segment_volumes(bundle, [make_image(field, SPACING)], passes=1, reporter=JsonReporter(stream))
    assert result.windows < len(window_slices(FIELD, [PATCH] * 3, OVERLAP)) // 10
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["done"] for e in events if e["stage"] == "segment"][-1] == result.windows


def test_resampled_case_in_a_zero_field_is_certain_background_outside(bundle_factory: BundleFactory) -> None:
    """With resampling, probabilities outside the box are background 1, and labels stay their argmax."""
    field = np.zeros((70, 80, 90), np.float32)
    field[20:48, 25:57, 30:66] = blob_array((36, 32, 28), seed=12)
    image = make_image(field, (1.0, 1.0, 1.0))
    result = segment_volumes(load_bundle(bundle_factory()), [image], want_probabilities=True, passes=1)
    assert result.probabilities is not None
    probs = sitk.GetArrayFromImage(result.probabilities)
    np.testing.assert_allclose(probs[:4, :4, :4, 0], 1.0, atol=1e-6)
    values = np.array([0] + [lab["value"] for lab in LABELS])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), values[probs.argmax(-1)])
    assert result.windows < len(window_slices((60, 53, 47), [PATCH] * 3, OVERLAP))
    assert_same_grid(result.labels, image)
