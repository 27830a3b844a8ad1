"""Hierarchical bootstrap of paired differences: known answers on constructed data, coverage, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from UHarmonyLib.evaluation.bootstrap import Interval, hierarchical_ci, paired_differences


def _replicates(mean: float, spread: float, replicates: int = 6, cases: int = 40, seed: int = 0) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [rng.normal(mean, spread, cases).tolist() for _ in range(replicates)]


def test_differences_around_zero_give_an_interval_around_zero() -> None:
    interval = hierarchical_ci(_replicates(0.0, 0.05))
    assert interval.low < 0 < interval.high
    assert not interval.holds
    assert interval.level == 0.95 and interval.replicates == 6 and interval.cases == 240


def test_a_small_steady_gain_holds() -> None:
    differences = _replicates(0.05, 0.01)
    interval = hierarchical_ci(differences)
    assert 0 < interval.low < 0.05 < interval.high
    assert interval.holds
    assert interval.mean == pytest.approx(np.mean([np.mean(r) for r in differences]), abs=1e-12)
    assert interval.to_json() == {
        "mean": round(interval.mean, 4),
        "low": round(interval.low, 4),
        "high": round(interval.high, 4),
        "level": 0.95,
        "replicates": 6,
        "cases": 240,
        "holds": True,
    }


def test_disagreeing_replicates_widen_the_interval_beyond_the_pooled_case_bootstrap() -> None:
    """Replicate means -0.10 .. +0.20, little spread inside each: the replicates are the uncertainty."""
    rng = np.random.default_rng(3)
    differences = [rng.normal(m, 0.02, 40).tolist() for m in (-0.1, -0.05, 0.0, 0.05, 0.1, 0.2)]
    hierarchical = hierarchical_ci(differences)
    flat = hierarchical_ci([[d for r in differences for d in r]])  # one replicate: a plain case bootstrap
    assert flat.mean == pytest.approx(hierarchical.mean, abs=1e-12)
    assert hierarchical.high - hierarchical.low > 3 * (flat.high - flat.low)
    assert flat.holds and not hierarchical.holds


def test_a_fixed_seed_gives_the_same_interval_and_another_seed_a_different_one() -> None:
    differences = _replicates(0.02, 0.05)
    assert hierarchical_ci(differences, seed=7) == hierarchical_ci(differences, seed=7)
    assert hierarchical_ci(differences, seed=7) != hierarchical_ci(differences, seed=8)


def test_the_interval_covers_a_true_mean_of_zero_about_95_percent_of_the_time() -> None:
    """200 datasets, 6 replicates (seed effects, sd 0.01) x 40 cases (sd 0.05), true mean 0."""
    hits = 0
    for k in range(200):
        rng = np.random.default_rng(1000 + k)
        differences = [rng.normal(rng.normal(0, 0.01), 0.05, 40) for _ in range(6)]
        interval = hierarchical_ci([d.tolist() for d in differences], n_boot=1000, seed=k)
        hits += interval.low <= 0 <= interval.high
    assert 0.90 <= hits / 200 <= 0.99


def test_replicates_of_different_sizes_are_resampled_within_their_own_cases() -> None:
    """Replicate 0 is constant 1, replicate 1 constant 0 with more cases: every draw is 0, 0.5 or 1."""
    interval = hierarchical_ci([[1.0] * 5, [0.0] * 9], n_boot=2000)
    assert interval.mean == 0.5 and interval.cases == 14
    assert interval.low == 0.0 and interval.high == 1.0


def test_paired_differences_pair_by_case_and_drop_undefined_scores() -> None:
    a = {"c1": 0.5, "c2": 0.7, "c3": None, "c4": 0.9}
    b = {"c4": 0.8, "c3": 0.6, "c2": None, "c1": 0.75}
    assert paired_differences(a, b) == pytest.approx([0.25, -0.1])
    with pytest.raises(ValueError, match=r"different cases .*c5"):
        paired_differences(a, {**b, "c5": 0.1})


@pytest.mark.parametrize(
    ("differences", "words"),
    [
        ([], "no replicates"),
        ([[0.1], []], "replicate 1 has no paired cases"),
        ([[0.1, None]], "None"),
        ([[0.1, float("nan")]], "not finite"),
    ],
)
def test_undefined_input_is_refused(differences: list[list[float]], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        hierarchical_ci(differences)


def test_level_and_draws_are_checked() -> None:
    with pytest.raises(ValueError, match="level"):
        hierarchical_ci([[0.1]], level=95)
    with pytest.raises(ValueError, match="n_boot"):
        hierarchical_ci([[0.1]], n_boot=0)


def test_holds_only_when_the_whole_interval_is_above_zero() -> None:
    assert Interval(0.1, 0.01, 0.2, 0.95, 1, 10).holds
    assert not Interval(0.1, 0.0, 0.2, 0.95, 1, 10).holds
    assert not Interval(-0.1, -0.2, -0.01, 0.95, 1, 10).holds
