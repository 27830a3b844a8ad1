"""Paired comparisons of two arms (B - A) with a hierarchical bootstrap 95 % interval.

A comparison of two training recipes has two sources of chance: which replicates (seeds)
were trained, and which test cases were scored. Resampling only the pooled cases treats
every replicate as the same model and gives an interval too narrow whenever replicates
disagree; so each draw resamples the replicates with replacement, then the cases with
replacement inside each drawn replicate, and takes the mean over drawn replicates of their
case means. The interval is the percentile interval of those draws. One replicate makes
it a plain case bootstrap.

Cases without a defined score (None: an empty reference, evaluation/scoring.py) are left
out by `paired_differences`; `hierarchical_ci` refuses them rather than guess, so a caller
cannot slip a missing score into a mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

_DRAW_ELEMENTS = 1 << 22  # resampled values held at once: bounds memory for large designs


@dataclass(frozen=True)
class Interval:
    """A paired difference (B - A) and its bootstrap interval."""

    mean: float  # mean paired difference (B - A): mean over replicates of the mean over cases
    low: float
    high: float
    level: float  # 0.95
    replicates: int
    cases: int  # total paired cases

    @property
    def holds(self) -> bool:
        """B beats A: the whole interval lies above 0."""
        return self.low > 0

    def to_json(self) -> dict[str, float | int | bool]:
        """Plain JSON for reports; figures rounded to 4 digits, `holds` decided before rounding."""
        return {
            "mean": round(self.mean, 4),
            "low": round(self.low, 4),
            "high": round(self.high, 4),
            "level": self.level,
            "replicates": self.replicates,
            "cases": self.cases,
            "holds": self.holds,
        }


def paired_differences(a: Mapping[str, float | None], b: Mapping[str, float | None]) -> list[float]:
    """B - A per case id (sorted ids), cases where either score is None left out; different case sets refused."""
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        shown = ", ".join(only[:5]) + (", ..." if len(only) > 5 else "")
        raise ValueError(f"the arms were scored on different cases ({len(only)} in one arm only: {shown})")
    out = []
    for case in sorted(a):
        score_a, score_b = a[case], b[case]
        if score_a is not None and score_b is not None:
            out.append(float(score_b) - float(score_a))
    return out


def _checked(differences: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """Each replicate's differences as an array; no replicate, an empty one, None or a non-finite value refused."""
    if len(differences) == 0:
        raise ValueError("no replicates to compare")
    out = []
    for r, values in enumerate(differences):
        if len(values) == 0:
            raise ValueError(f"replicate {r} has no paired cases")
        if any(v is None for v in values):
            raise ValueError(f"replicate {r} holds None: leave cases without a score out (paired_differences does)")
        array = np.asarray(values, dtype=np.float64)
        if not np.isfinite(array).all():
            raise ValueError(f"replicate {r} holds a value that is not finite")
        out.append(array)
    return out


def _draw(padded: np.ndarray, sizes: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` bootstrap statistics: replicates resampled, then cases inside each drawn replicate."""
    replicates, width = padded.shape
    drawn = rng.integers(0, replicates, size=(n, replicates))
    counts = sizes[drawn]  # (n, R): cases of each drawn replicate
    if (sizes == width).all():
        cases = rng.integers(0, width, size=(n, replicates, width))
    else:  # replicates of different sizes: draw within each one's own count (clipped), mask the padding
        scaled = rng.random((n, replicates, width)) * counts[..., None]
        cases = np.minimum(scaled.astype(np.intp), counts[..., None] - 1)
    values = padded[drawn[..., None], cases]
    inside = np.arange(width) < counts[..., None]
    case_means = np.where(inside, values, 0.0).sum(axis=2) / counts
    return case_means.mean(axis=1)


def hierarchical_ci(
    differences: Sequence[Sequence[float]], level: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> Interval:
    """Percentile interval of the mean paired difference; `differences[r]` are replicate r's per-case B - A."""
    values = _checked(differences)
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, not {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, not {n_boot}")
    sizes = np.array([len(v) for v in values])
    padded = np.zeros((len(values), int(sizes.max())))
    for r, v in enumerate(values):
        padded[r, : len(v)] = v
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _DRAW_ELEMENTS // padded.size)
    stats = np.concatenate(
        [_draw(padded, sizes, min(per_chunk, n_boot - start), rng) for start in range(0, n_boot, per_chunk)]
    )
    tail = (1 - level) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return Interval(
        mean=float(np.mean([v.mean() for v in values])),
        low=float(low),
        high=float(high),
        level=level,
        replicates=len(values),
        cases=int(sizes.sum()),
    )
