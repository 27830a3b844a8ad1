"""Site-against-site statistics: how much more cases differ across sites than within one.

Appearance (per channel and site pair): the 1-D Wasserstein distance W1 between two
cases' normal-tissue intensity distributions is the mean absolute difference of their
quantile functions. `ratio` = mean W1 over cross-site case pairs / mean W1 over
same-site case pairs (pooled over all sites): about 1 when sites are exchangeable, and
`distance` = W1 between the sites' mean quantile functions (their Wasserstein
barycentres), in robust standard deviations.

Structure: one-way permutation tests of "site explains the feature" with the F ratio
(between-site / within-site variance) as statistic: lesion count per case, and each
lesion's log volume, distance from the head's centre and 3-D centre (multivariate, as
in PERMANOVA). The effect size eta² is the share of the feature's variance that the
sites explain. Lesions are permuted as if independent (lesions of one case share its
anatomy), so p-values are approximate; the thresholds in decide.py leave room for that.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from UHarmonyLib.diagnose.features import CaseFeatures

PERMUTATIONS = 1999
SEED = 20240611  # fixed: the same data give the same report


def w1(a: Sequence[float], b: Sequence[float]) -> float:
    return float(np.mean(np.abs(np.asarray(a) - np.asarray(b))))


def median_defined(values: list[float | None]) -> float | None:
    """The median of the defined values; None when none is."""
    kept = [v for v in values if v is not None]
    return float(np.median(kept)) if kept else None


@dataclass
class PairAppearance:
    """How two sites' images of one channel differ, beyond gain and offset."""

    channel: str
    sites: tuple[str, str]
    distance: float  # W1 between the sites' barycentres (robust sd units)
    ratio: float | None  # cross-site / same-site mean W1; None without a site of two cases
    snr_ratio: float | None  # larger / smaller median SNR
    bias_ratio: float | None  # larger / smaller median bias-field sd (measured on each case's first channel)

    def to_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "sites": list(self.sites),
            "distance": round(self.distance, 4),
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "snr_ratio": None if self.snr_ratio is None else round(self.snr_ratio, 3),
            "bias_ratio": None if self.bias_ratio is None else round(self.bias_ratio, 3),
        }


def _fold(a: float | None, b: float | None) -> float | None:
    """max/min of two positive site figures (1 = alike); None when either is missing or not positive."""
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return max(a, b) / min(a, b)


def appearance_pairs(cases: list[CaseFeatures], sites: list[str], channels: list[str]) -> list[PairAppearance]:
    """Every channel's site-pair evidence (sites that both acquire the channel)."""
    out = []
    for channel in channels:
        by = {s: [c.channels[channel] for c in cases if c.site == s and channel in c.channels] for s in sites}
        same = [w1(x.quantiles, y.quantiles) for s in sites for x, y in itertools.combinations(by[s], 2)]
        within = float(np.mean(same)) if same else None
        for a, b in itertools.combinations(sites, 2):
            if not by[a] or not by[b]:
                continue
            cross = float(np.mean([w1(x.quantiles, y.quantiles) for x in by[a] for y in by[b]]))
            centre_a = np.mean([x.quantiles for x in by[a]], axis=0)
            centre_b = np.mean([x.quantiles for x in by[b]], axis=0)
            out.append(
                PairAppearance(
                    channel,
                    (a, b),
                    w1(centre_a, centre_b),
                    cross / within if within else None,
                    _fold(median_defined([x.snr for x in by[a]]), median_defined([x.snr for x in by[b]])),
                    _fold(
                        median_defined([c.bias for c in cases if c.site == a]),
                        median_defined([c.bias for c in cases if c.site == b]),
                    ),
                )
            )
    return out


def _anova(x: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F ratio, between-site sum of squares) of (n, d) values for each row of `groups` ((P, n) site indices)."""
    p, n = groups.shape
    k = int(groups.max()) + 1
    index = (np.arange(p)[:, None] * k + groups).ravel()
    counts = np.bincount(index, minlength=p * k).reshape(p, k)
    grand = (x.sum(0) ** 2).sum() / n
    between = -grand * np.ones(p)
    for d in range(x.shape[1]):
        sums = np.bincount(index, weights=np.tile(x[:, d], p), minlength=p * k).reshape(p, k)
        between += (sums**2 / np.maximum(counts, 1)).sum(1)
    within = (x**2).sum() - grand - between
    used = (counts > 0).sum(1)
    f = (between / np.maximum(used - 1, 1)) / np.maximum(within / np.maximum(n - used, 1), 1e-12)
    return f, between


@dataclass
class SiteTest:
    """A permutation test of one structural feature across sites."""

    feature: str
    unit: str  # "case" or "lesion": what is permuted
    samples: int
    f: float | None
    p: float | None
    eta2: float | None

    def to_json(self) -> dict[str, Any]:
        r = {"f": 3, "p": 4, "eta2": 3}
        return {
            "feature": self.feature,
            "unit": self.unit,
            "samples": self.samples,
            **{k: None if getattr(self, k) is None else round(getattr(self, k), d) for k, d in r.items()},
        }


def site_test(feature: str, unit: str, values: Sequence[Any], sites: Sequence[str], seed: int = SEED) -> SiteTest:
    """Permutation test of site differences in `values` (scalars or vectors); undefined with < 2 sites."""
    names = sorted(set(sites))
    if len(names) < 2 or len(values) <= len(names):
        return SiteTest(feature, unit, len(values), None, None, None)
    x = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    g = np.array([names.index(s) for s in sites])
    rng = np.random.default_rng(seed)
    f, between = _anova(x, np.stack([g, *(rng.permutation(g) for _ in range(PERMUTATIONS))]))
    total = float(((x - x.mean(0)) ** 2).sum())
    eta2 = float(between[0]) / total if total > 0 else 0.0
    p = float((np.sum(f[1:] >= f[0] - 1e-9 * abs(f[0])) + 1) / (PERMUTATIONS + 1))
    return SiteTest(feature, unit, len(x), float(f[0]), p, eta2)


def structure_tests(cases: list[CaseFeatures]) -> list[SiteTest]:
    """Count per case; log volume, depth and centre per lesion."""
    lesions = [(c.site, les) for c in cases for les in c.lesions]
    sites = [s for s, _ in lesions]
    return [
        site_test("lesion count", "case", [c.lesion_count for c in cases], [c.site for c in cases]),
        site_test("lesion size (log ml)", "lesion", [np.log(max(les["ml"], 1e-4)) for _, les in lesions], sites),
        site_test(
            "lesion depth (mm from head centre)",
            "lesion",
            [np.linalg.norm(les["centre_mm"]) for _, les in lesions],
            sites,
        ),
        site_test("lesion location (3-D centre)", "lesion", [les["centre_mm"] for _, les in lesions], sites),
    ]
