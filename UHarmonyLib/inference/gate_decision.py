"""Case-level gate decisions: aggregate per-window site probabilities into one vector.

The gate is evaluated on every sliding window first; windows are weighted by how much
non-background they hold (air says little about the scanner), and the weighted mean
probability drives every window of the segmentation pass, so all patches of a case are
segmented with the same site weights. A case is unfamiliar when that vector is
undecided (high normalized entropy) or, where the bundle has a gate bank, when its
signature lies far from every known site's (the softmax alone is over-confident on
scanners it never saw). When the user names the site the gate's choice is not used, but
the distance is still measured: naming a site does not make a strange scanner familiar.
Without a bank that check is impossible, and `familiar` is None rather than a guess.
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
    distances: np.ndarray | None = None  # per site, to the gate bank; None without a bank
    distance_threshold: float = float("inf")

    @property
    def chosen(self) -> str:
        return self.sites[int(np.argmax(self.probabilities))]

    @property
    def entropy(self) -> float:
        return normalized_entropy(self.probabilities)

    @property
    def distance(self) -> float | None:
        """Distance to the nearest known site's gate vectors."""
        return None if self.distances is None else float(np.min(self.distances))

    @property
    def nearest(self) -> str | None:
        return None if self.distances is None else self.sites[int(np.argmin(self.distances))]

    @property
    def far(self) -> bool:
        """The case's signature lies beyond the bank's threshold from every known site."""
        return self.distance is not None and self.distance > self.distance_threshold

    @property
    def familiar(self) -> bool | None:
        """Auto: confident and near a known site; site given: near a known site; None: given and no bank."""
        if self.given:
            return None if self.distances is None else not self.far
        return self.entropy <= self.familiar_threshold and not self.far

    @property
    def concern(self) -> str:
        """Why the case is unfamiliar (or why that was not checked), in plain words; empty when it is familiar."""
        if self.familiar is None:
            return "the site was named and the model has no gate bank to measure the case's distance to its sites"
        if self.familiar:
            return ""
        reasons = []
        if self.far:
            reasons.append(
                f"its scanner signature is far from every known site (distance {self.distance:.2f} to "
                f"{self.nearest}, familiar up to {self.distance_threshold:.2f})"
            )
        if self.entropy > self.familiar_threshold:
            reasons.append(
                f"the gate cannot decide between sites (entropy {self.entropy:.2f} > {self.familiar_threshold:.2f})"
            )
        return " and ".join(reasons)

    def to_json(self) -> dict[str, Any]:
        return {
            "sites": {s: round(float(p), 6) for s, p in zip(self.sites, self.probabilities)},
            "chosen": self.chosen,
            "entropy": round(self.entropy, 6),
            "familiar": self.familiar,
            "familiar_reason": self.concern or None,
            "distance": None if self.distance is None else round(self.distance, 4),
            "nearest_site": self.nearest,
            "familiar_distance": None if self.distances is None else round(self.distance_threshold, 4),
            "site_given": self.given,
            "windows": int(self.window_probabilities.shape[0]),
        }


def aggregate(window_probs: np.ndarray, window_weights: np.ndarray) -> np.ndarray:
    """Weighted mean of per-window probabilities (N, S) -> (S,), summing to 1."""
    w = np.asarray(window_weights, dtype=float) + 1e-3
    p = (window_probs * w[:, None]).sum(0) / w.sum()
    return p / p.sum()


def given_site(sites: list[str], name: str, threshold: float) -> GateDecision:
    """The decision when the user names the site: one-hot weights; familiarity unknown without the gate's pass."""
    p = np.zeros(len(sites))
    p[sites.index(name)] = 1.0
    return GateDecision(sites, p, threshold, given=True)
