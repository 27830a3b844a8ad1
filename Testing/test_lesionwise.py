"""Lesion-wise Dice on hand-built masks with known answers, and its per-case form in scoring.py."""

from __future__ import annotations

import numpy as np
import pytest

from UHarmonyLib.evaluation.lesionwise import components, lesion_dice
from UHarmonyLib.evaluation.scoring import WHOLE, dice, lesion_scores

SHAPE = (12, 20, 20)


def _box(z: slice, y: slice, x: slice) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[z, y, x] = True
    return mask


LESION_1 = _box(slice(1, 4), slice(1, 5), slice(1, 5))  # 48 voxels
LESION_2 = _box(slice(6, 10), slice(10, 14), slice(10, 14))  # 64 voxels
TRUTH = LESION_1 | LESION_2
SPECK = _box(slice(1, 3), slice(15, 17), slice(15, 17))  # 8 voxels, far from both lesions


def test_one_lesion_found_one_missed_scores_half() -> None:
    assert lesion_dice(LESION_1, TRUTH) == 0.5
    assert dice(LESION_1, TRUTH) == pytest.approx(2 * 48 / (48 + 112))  # voxel Dice weighs the lesions by size


def test_a_spurious_blob_is_a_false_positive_scoring_zero() -> None:
    assert lesion_dice(LESION_1 | SPECK, TRUTH) == pytest.approx((1 + 0) / (2 + 1))
    assert lesion_dice(TRUTH | SPECK, TRUTH) == pytest.approx((1 + 1) / (2 + 1))


def test_two_predicted_pieces_of_one_lesion_count_as_one_match() -> None:
    """Lesion 2 split at z = 8 into two predicted pieces (separate components): together they cover it."""
    top = _box(slice(6, 8), slice(10, 14), slice(10, 14))
    bottom = _box(slice(9, 10), slice(10, 14), slice(10, 14))
    pred = LESION_1 | top | bottom
    assert components(top | bottom).max() == 2
    assert lesion_dice(pred, TRUTH) == pytest.approx((1 + 2 * 48 / (64 + 48)) / 2)


def test_a_piece_reaching_outside_its_lesion_counts_in_full() -> None:
    """The union of overlapping components is scored whole: voxels outside the lesion lower its Dice."""
    grown = _box(slice(1, 4), slice(1, 5), slice(1, 7))  # lesion 1 plus 24 voxels
    expected = 2 * 48 / (48 + 72)
    assert lesion_dice(grown, LESION_1) == pytest.approx(expected)
    assert lesion_dice(grown, LESION_1) == pytest.approx(dice(grown, LESION_1), abs=1e-6)  # one lesion: voxel Dice


def test_components_touching_at_a_corner_are_one_lesion() -> None:
    """26-connectivity: two boxes sharing only a corner voxel are one lesion."""
    first = _box(slice(0, 2), slice(0, 2), slice(0, 2))
    second = _box(slice(2, 4), slice(2, 4), slice(2, 4))
    assert components(first | second).max() == 1
    assert lesion_dice(first, first | second) == pytest.approx(2 * 8 / (8 + 16))


def test_empty_reference_has_no_lesion_dice_whatever_the_prediction() -> None:
    empty = np.zeros(SHAPE, dtype=bool)
    assert lesion_dice(empty, empty) is None
    assert lesion_dice(SPECK, empty) is None
    assert lesion_dice(empty, TRUTH) == 0.0


def test_min_size_ignores_small_components_of_either_mask() -> None:
    assert lesion_dice(LESION_1 | SPECK, TRUTH, min_size=9) == 0.5  # the 8-voxel speck is no false positive
    assert lesion_dice(LESION_2, TRUTH, min_size=50) == 1.0  # the 48-voxel lesion 1 is no lesion
    assert lesion_dice(LESION_2, TRUTH, min_size=64) == 1.0  # a component of exactly min_size is kept
    assert lesion_dice(TRUTH, TRUTH, min_size=65) is None  # no lesion left


def test_different_grids_are_refused() -> None:
    with pytest.raises(ValueError, match="different grids"):
        lesion_dice(np.zeros((2, 2, 2), dtype=bool), np.zeros((2, 2, 3), dtype=bool))


def test_lesion_scores_per_label_and_whole_lesion() -> None:
    """A case labelling lesion 1 as class 1 and lesion 2 as class 2; the prediction swaps nothing, misses lesion 2."""
    truth_groups = LESION_1.astype(np.int64) + 2 * LESION_2
    pred = np.where(LESION_1, 1, 0) + np.where(SPECK, 2, 0)
    scores = lesion_scores(pred, [[0], [1], [2]], ["core", "edema"], truth_groups)
    assert scores == {"core": 1.0, "edema": 0.0, WHOLE: pytest.approx((1 + 0) / (2 + 1))}
    coarse = lesion_scores(pred, [[0], [1, 2]], [WHOLE], (truth_groups > 0).astype(np.int64))
    assert coarse == {WHOLE: pytest.approx(1 / 3)}
