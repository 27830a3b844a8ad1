"""Test-time mirroring: the card's mirrored passes are averaged, flipped back onto the right voxels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import CHANNELS, LABELS, SITES, blob_array, make_image, tiny_net

from UHarmonyLib.inference.engine import segment_volumes
from UHarmonyLib.model.weights import Bundle, BundleError, load_bundle, make_card

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


def _probabilities(bundle: Bundle, array_zyx: np.ndarray, mirror: bool = True) -> np.ndarray:
    image = make_image(array_zyx, SPACING)
    result = segment_volumes(bundle, [image], site="beta", want_probabilities=True, mirror=mirror)
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
    a, b = _probabilities(mirrored, array), _probabilities(mirrored, flipped)
    np.testing.assert_allclose(b, a[:, :, ::-1], atol=1e-5)
    single_a, single_b = _probabilities(bundle, array, mirror=False), _probabilities(bundle, flipped, mirror=False)
    assert np.abs(single_b - single_a[:, :, ::-1]).max() > 1e-3
    # the mirrored result is the mean of the two passes' probabilities
    np.testing.assert_allclose(a, (single_a + single_b[:, :, ::-1]) / 2, atol=1e-5)


def test_mirror_false_and_an_empty_axis_list_are_one_pass(bundle: Bundle) -> None:
    array = blob_array(SIZE, seed=4)
    image = make_image(array, SPACING)
    one = segment_volumes(_with_mirror(bundle, []), [image], site="beta", want_probabilities=True)
    off = segment_volumes(bundle, [image], site="beta", want_probabilities=True, mirror=False)
    assert one.passes == off.passes == 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(one.probabilities), sitk.GetArrayFromImage(off.probabilities))
    full = segment_volumes(bundle, [image], site="beta", want_probabilities=True)
    assert full.passes == 4
    assert not np.allclose(sitk.GetArrayFromImage(full.probabilities), sitk.GetArrayFromImage(off.probabilities))


def test_card_without_mirror_axes_mirrors_all_three(bundle: Bundle) -> None:
    """Bundles written before the key existed were trained with flips on every axis."""
    image = make_image(blob_array(SIZE, seed=5), SPACING)
    assert segment_volumes(_with_mirror(bundle, None), [image], site="beta").passes == 4


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
