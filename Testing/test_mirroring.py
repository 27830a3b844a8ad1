"""Test-time mirroring: the mirrored passes are averaged, flipped back onto the right voxels, in a fixed order."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import CHANNELS, LABELS, SITES, assert_one_line_error, blob_array, make_image, run_main, tiny_net

from UHarmonyLib.errors import InputError
from UHarmonyLib.inference.engine import mirror_flips, segment_volumes
from UHarmonyLib.model.card import MIRROR_PASSES
from UHarmonyLib.model.weights import Bundle, BundleError, load_bundle, make_card, save_bundle
from UHarmonyLib.options import MIRROR_PASSES as MIRROR_PASSES_OPTION

SPACING = (1.5, 1.5, 1.5)  # the tiny bundle's model spacing: no resampling, so arrays compare voxel for voxel
# x spans two windows of 16 (starts 0 and 12 at overlap 0.25): the window layout is symmetric under an x flip
SIZE = (28, 16, 16)


def _with_mirror(bundle: Bundle, axes: list[int] | None) -> Bundle:
    card = json.loads(json.dumps(bundle.card))
    if axes is None:
        del card["inference"]["mirror_axes"]
    else:
        card["inference"]["mirror_axes"] = axes
    return Bundle(bundle.path, card, bundle.net)


def _probabilities(bundle: Bundle, array_zyx: np.ndarray, passes: int | None = None) -> np.ndarray:
    image = make_image(array_zyx, SPACING)
    result = segment_volumes(bundle, [image], site="beta", want_probabilities=True, passes=passes)
    assert result.probabilities is not None
    return sitk.GetArrayFromImage(result.probabilities)  # (z, y, x, K)


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> Bundle:
    return load_bundle(tiny_bundle)


def test_mirrored_prediction_is_flip_equivariant(bundle: Bundle) -> None:
    """Averaging the pass as is and the x-flipped pass makes the result commute with an x flip of the input.

    A single pass does not (the convolutions are not symmetric), so the identity can only hold
    if each flipped pass is flipped back onto the voxels it came from.
    """
    array = blob_array(SIZE, seed=3)
    flipped = np.ascontiguousarray(array[:, :, ::-1])  # physical x: model-space axis 0 after reorientation
    mirrored = _with_mirror(bundle, [0])
    a, b = _probabilities(mirrored, array, passes=2), _probabilities(mirrored, flipped, passes=2)
    np.testing.assert_allclose(b, a[:, :, ::-1], atol=1e-5)
    single_a, single_b = _probabilities(bundle, array, passes=1), _probabilities(bundle, flipped, passes=1)
    assert np.abs(single_b - single_a[:, :, ::-1]).max() > 1e-3
    # the mirrored result is the mean of the two passes' probabilities
    np.testing.assert_allclose(a, (single_a + single_b[:, :, ::-1]) / 2, atol=1e-5)


def test_eight_passes_commute_with_every_flip(bundle: Bundle) -> None:
    """All eight flips of three axes form a group: their mean commutes with a flip along any axis of the input."""
    array = blob_array(SIZE, seed=6)
    a = _probabilities(bundle, array, passes=8)
    for axis in range(3):  # (z, y, x) array axes: model-space axes 2, 1, 0
        flipped = np.ascontiguousarray(np.flip(array, axis))
        np.testing.assert_allclose(_probabilities(bundle, flipped, passes=8), np.flip(a, axis), atol=1e-5)


def test_passes_follow_a_fixed_order_of_flips(bundle: Bundle) -> None:
    """None, each axis alone, each pair, all three: 4 passes are the single flips the engine always ran."""
    order = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]  # tensor dims: model-space axis + 2
    for passes in (1, 2, 4, 8):
        assert mirror_flips(bundle, passes) == order[:passes]
    assert mirror_flips(bundle) == order[:MIRROR_PASSES]
    assert f"default {MIRROR_PASSES}:" in (MIRROR_PASSES_OPTION.help or "")  # the CLI's help says the engine's default
    assert mirror_flips(_with_mirror(bundle, [2, 0]), 4) == [(), (4,), (2,), (4, 2)]  # the card's axis order


def test_one_pass_and_an_empty_axis_list_are_one_pass(bundle: Bundle) -> None:
    array = blob_array(SIZE, seed=4)
    image = make_image(array, SPACING)
    one = segment_volumes(_with_mirror(bundle, []), [image], site="beta", want_probabilities=True)
    off = segment_volumes(bundle, [image], site="beta", want_probabilities=True, passes=1)
    assert one.passes == off.passes == 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(one.probabilities), sitk.GetArrayFromImage(off.probabilities))
    assert segment_volumes(bundle, [image], site="beta").passes == MIRROR_PASSES  # the measured default
    full = segment_volumes(bundle, [image], site="beta", want_probabilities=True, passes=4)
    assert not np.allclose(sitk.GetArrayFromImage(full.probabilities), sitk.GetArrayFromImage(off.probabilities))


def test_card_without_mirror_axes_mirrors_all_three(bundle: Bundle) -> None:
    """Bundles written before the key existed were trained with flips on every axis."""
    image = make_image(blob_array(SIZE, seed=5), SPACING)
    assert segment_volumes(_with_mirror(bundle, None), [image], site="beta", passes=8).passes == 8


@pytest.mark.bad_input("segment: --mirror-passes beyond a card's flips", by="passes", words="words")
@pytest.mark.parametrize(
    ("passes", "words"),
    [
        (4, "4 mirrored passes asked for; this model mirrors along axes [0] (its card's inference.mirror_axes)"),
        (8, "8 mirrored passes asked for; this model mirrors along axes [0] (its card's inference.mirror_axes)"),
    ],
)
def test_more_passes_than_the_card_allows_refused(passes: int, words: str, tmp_path: Path) -> None:
    """More passes than a card's axes give (2 ** axes) are refused in one line naming the bundle, exit 2."""
    net = tiny_net()
    card = make_card(
        net,
        name="onex",
        version=1,
        channels=CHANNELS,
        labels=LABELS,
        sites=SITES,
        preprocessing={"spacing": list(SPACING)},
        inference={"patch_size": [16, 16, 16], "mirror_axes": [0]},
    )
    bundle = save_bundle(net, card, tmp_path / "onex-v1")
    image = tmp_path / "case.nrrd"
    sitk.WriteImage(make_image(blob_array(SIZE, seed=5), SPACING), str(image))
    run = run_main("segment", "--model", bundle, image, "--out", tmp_path / "seg.nrrd", "--mirror-passes", passes)
    assert assert_one_line_error(run) == f"uharmony: error: {bundle}: {words}, which gives 1 to 2 passes"
    assert run.code == InputError.exit_code and not (tmp_path / "seg.nrrd").exists()


@pytest.mark.bad_input("train, save: a card's inference.mirror_axes", by="axes", words="words")
@pytest.mark.parametrize(
    ("axes", "words"),
    [
        ([3], "'inference.mirror_axes': entry 0: 3 is outside [0, 2]"),
        ([0, 0], "'inference.mirror_axes': [0, 0] has repeated entries"),
        ("all", "'inference.mirror_axes': 'all' is not a list"),
        ([-1], "'inference.mirror_axes': entry 0: -1 is outside [0, 2]"),
    ],
)
def test_bad_mirror_axes_refused(axes: object, words: str) -> None:
    """A card with axes other than distinct 0, 1, 2 is refused with the key named (exit 3 when loaded)."""
    with pytest.raises(BundleError, match=re.escape(words)):
        make_card(
            tiny_net(),
            name="bad",
            version=1,
            channels=CHANNELS,
            labels=LABELS,
            sites=SITES,
            inference={"patch_size": [16, 16, 16], "mirror_axes": axes},
        )
