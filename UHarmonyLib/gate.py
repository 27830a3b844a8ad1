"""Case-level gate decisions: aggregate per-window site probabilities into one vector.

The gate is evaluated on every sliding window first; windows are weighted by how much
non-background they hold (air says little about the scanner), and the weighted mean
probability drives every window of the segmentation pass, so all patches of a case are
segmented with the same site weights. The normalized entropy of that vector measures
how unlike every known site the case looks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def normalized_entropy(p: np.ndarray) -> float:
    """Entropy of a probability vector divided by its maximum, log(S): 0 = certain, 1 = uniform."""
    if len(p) < 2:
        return 0.0
    q = np.clip(p.astype(float), 1e-12, 1.0)
    return float(-(q * np.log(q)).sum() / math.log(len(p)))


@dataclass
class GateDecision:
    """What the gate decided for one case, and how sure it was."""

    sites: list[str]
    probabilities: np.ndarray
    familiar_threshold: float
    given: bool = False
    window_probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @property
    def chosen(self) -> str:
        return self.sites[int(np.argmax(self.probabilities))]

    @property
    def entropy(self) -> float:
        return normalized_entropy(self.probabilities)

    @property
    def familiar(self) -> bool:
        return self.entropy <= self.familiar_threshold

    def to_json(self) -> dict[str, Any]:
        return {
            "sites": {s: round(float(p), 6) for s, p in zip(self.sites, self.probabilities)},
            "chosen": self.chosen,
            "entropy": round(self.entropy, 6),
            "familiar": self.familiar,
            "site_given": self.given,
            "windows": int(self.window_probabilities.shape[0]),
        }


def aggregate(window_probs: np.ndarray, window_weights: np.ndarray) -> np.ndarray:
    """Weighted mean of per-window probabilities (N, S) -> (S,), summing to 1."""
    w = np.asarray(window_weights, dtype=float) + 1e-3
    p = (window_probs * w[:, None]).sum(0) / w.sum()
    return p / p.sum()


def given_site(sites: list[str], name: str, threshold: float) -> GateDecision:
    """The decision when the user names the site: one-hot, the gate is not run."""
    p = np.zeros(len(sites))
    p[sites.index(name)] = 1.0
    return GateDecision(sites, p, threshold, given=True)
