"""benchmarks/gate_figures.py on constructed records whose accuracy, calibration, AUROC and coverage are known."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from gate_figures import accuracy, auroc, expected_calibration_error, flag_figures, threshold_at

WHOLE = "whole lesion"


def record(site: str, chosen: str, confidence: float, distance: float = 1.0, dice: float = 0.5) -> dict[str, Any]:
    other = "b" if chosen == "a" else "a"
    return {
        "site": site,
        "chosen": chosen,
        "probabilities": {chosen: confidence, other: round(1 - confidence, 6)},
        "distance": distance,
        "dice": {WHOLE: dice},
    }


def test_accuracy_and_calibration_error_of_known_gates() -> None:
    honest = [record("a", "a", 0.8)] * 8 + [record("a", "b", 0.8)] * 2  # 80 % confident, 80 % right
    assert accuracy(honest) == 0.8
    assert expected_calibration_error(honest) == pytest.approx(0.0, abs=1e-9)
    overconfident = [record("a", "a", 0.99)] * 5 + [record("a", "b", 0.99)] * 5  # 99 % sure, right half the time
    assert accuracy(overconfident) == 0.5
    assert expected_calibration_error(overconfident) == pytest.approx(0.49, abs=1e-4)
    # two bins, each off by its own gap, weighted by its share of the cases
    mixed = [record("a", "a", 0.95)] * 3 + [record("a", "a", 0.55)] + [record("a", "b", 0.55)] * 3
    expected = 3 / 7 * abs(1.0 - 0.95) + 4 / 7 * abs(0.25 - 0.55)
    assert expected_calibration_error(mixed) == pytest.approx(expected, abs=1e-4)


def test_threshold_flags_the_declared_share_of_known_cases() -> None:
    distances = np.linspace(0.0, 1.0, 101)
    t = threshold_at(distances, 0.05)
    assert np.mean(distances > t) == pytest.approx(0.05, abs=0.011)
    with pytest.raises(ValueError, match="false-positive rate"):
        threshold_at(distances, 0.0)


def test_auroc_is_one_for_separated_scores_and_a_half_for_identical_ones() -> None:
    assert auroc([0.1, 0.2, 0.3], [0.7, 0.8]) == 1.0
    assert auroc([0.7, 0.8], [0.1, 0.2]) == 0.0
    assert auroc([0.5, 0.5], [0.5, 0.5]) == 0.5
    assert auroc([0.1, 0.6], [0.5, 0.9]) == 0.75  # 3 of 4 pairs ordered


def test_flag_figures_set_aside_the_far_cases_and_score_the_rest() -> None:
    seen = [record("a", "a", 0.9, distance=d, dice=0.8) for d in (0.5, 0.6, 0.7, 2.5)]
    unseen = [record("x", "a", 0.6, distance=d, dice=0.2) for d in (3.0, 4.0, 0.65, 5.0)]
    f = flag_figures(seen, unseen, threshold=1.0)
    assert f["flagged_unseen"] == 0.75 and f["flagged_seen"] == 0.25
    assert f["coverage"] == 0.5 and f["dice_all"] == 0.5 and f["dice_unseen"] == 0.2
    assert f["dice_kept"] == pytest.approx((0.8 * 3 + 0.2) / 4, abs=1e-4)
    assert f["auroc"] == pytest.approx(14 / 16, abs=1e-4)  # pairs (seen, unseen) with the unseen one farther
