"""Case-level gate decisions: aggregation, entropy, and the JSON the CLI writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from UHarmonyLib.inference.gate_decision import GateDecision, aggregate, given_site, normalized_entropy

SITES = ["alpha", "beta", "gamma", "delta"]


def _window_probs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n, len(SITES)))
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("seed", range(4))
def test_aggregate_is_a_probability_vector(seed: int) -> None:
    """The aggregated site vector lies in the simplex and is the foreground-weighted mean of the windows."""
    probs = _window_probs(7, seed)
    weights = np.random.default_rng(seed + 10).uniform(0.0, 1.0, 7)
    weights[0] = 0.0  # an all-background window still counts a little
    p = aggregate(probs, weights)
    assert p.shape == (len(SITES),)
    assert (p >= 0).all() and (p <= 1).all()
    assert math.isclose(p.sum(), 1.0, abs_tol=1e-12)
    w = weights + 1e-3
    np.testing.assert_allclose(p, (probs * w[:, None]).sum(0) / w.sum(), atol=1e-12)


def test_aggregate_prefers_foreground_windows() -> None:
    """Windows holding more foreground pull the decision towards their site."""
    probs = np.array([[0.9, 0.05, 0.03, 0.02], [0.1, 0.8, 0.05, 0.05]])
    p = aggregate(probs, np.array([0.05, 0.9]))
    assert int(np.argmax(p)) == 1
    p = aggregate(probs, np.array([0.9, 0.05]))
    assert int(np.argmax(p)) == 0


def test_normalized_entropy_bounds() -> None:
    """Normalized entropy is 0 for a one-hot vector, 1 for the uniform vector, and strictly between otherwise."""
    for k in range(len(SITES)):
        assert normalized_entropy(np.eye(len(SITES))[k]) == pytest.approx(0.0, abs=1e-9)
    assert normalized_entropy(np.full(len(SITES), 1 / len(SITES))) == pytest.approx(1.0, abs=1e-12)
    mid = normalized_entropy(np.array([0.7, 0.1, 0.1, 0.1]))
    assert 0.0 < mid < 1.0
    assert normalized_entropy(np.array([1.0])) == 0.0


def test_decision_json_keys_and_values() -> None:
    """GateDecision.to_json has the documented keys, site probabilities summing to 1, and the argmax as chosen."""
    probs = _window_probs(5, 3)
    p = aggregate(probs, np.ones(5))
    decision = GateDecision(SITES, p, familiar_threshold=0.5, window_probabilities=probs)
    d = json.loads(json.dumps(decision.to_json()))
    assert set(d) == {
        "sites",
        "chosen",
        "entropy",
        "familiar",
        "familiar_reason",
        "distance",
        "nearest_site",
        "familiar_distance",
        "site_given",
        "windows",
    }
    assert list(d["sites"]) == SITES
    assert sum(d["sites"].values()) == pytest.approx(1.0, abs=1e-5)
    assert d["chosen"] == SITES[int(np.argmax(p))]
    assert d["entropy"] == pytest.approx(normalized_entropy(p), abs=1e-6)
    assert d["familiar"] == (normalized_entropy(p) <= 0.5)
    assert d["site_given"] is False
    assert d["windows"] == 5


def test_familiar_threshold() -> None:
    """A confident decision is familiar; a near-uniform one is not."""
    assert GateDecision(SITES, np.array([0.97, 0.01, 0.01, 0.01]), 0.5).familiar
    assert not GateDecision(SITES, np.array([0.3, 0.25, 0.25, 0.2]), 0.5).familiar


def test_given_site_is_one_hot() -> None:
    """A site named by the user gives a one-hot decision marked as given, with zero entropy, familiarity unknown."""
    d = given_site(SITES, "gamma", 0.5).to_json()
    assert d["sites"] == {"alpha": 0.0, "beta": 0.0, "gamma": 1.0, "delta": 0.0}
    assert d["chosen"] == "gamma"
    assert d["entropy"] == 0.0
    assert d["familiar"] is None and "no gate bank" in d["familiar_reason"]  # nothing measured, nothing claimed
    assert d["site_given"] is True
