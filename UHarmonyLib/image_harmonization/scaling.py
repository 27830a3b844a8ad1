"""Per-image affine scaling in the foreground: robust z-score and percentile scaling.

Both only undo a global gain and offset (what differs most between scanners' stored
values); robust statistics keep lesions and bright vessels from moving the result.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from UHarmonyLib.errors import InputError
from UHarmonyLib.image_harmonization.mask import Voxels

IQR_PER_SD = 1.349  # the interquartile range of a normal distribution, in standard deviations
PERCENTILE: dict[str, Any] = {"percentiles": [1.0, 99.0]}


def _affine(x: np.ndarray, centre: float, scale: float, where: str) -> np.ndarray:
    if not scale > 0:
        raise InputError(f"{where}: the foreground has no intensity spread; cannot scale it")
    return (x - centre) / scale


def zscore(v: Voxels, settings: dict[str, Any], fitted: dict[str, Any], where: str) -> np.ndarray:
    """(x - median) / (IQR / 1.349) of the foreground: mean 0 / sd 1 for normal tissue, robust to lesions."""
    q1, median, q3 = np.percentile(v.fg, [25.0, 50.0, 75.0])
    return _affine(v.x, float(median), float(q3 - q1) / IQR_PER_SD, where)


def percentile(v: Voxels, settings: dict[str, Any], fitted: dict[str, Any], where: str) -> np.ndarray:
    """The foreground's low and high percentiles to 0 and 1 (not clipped)."""
    lo, hi = np.percentile(v.fg, settings["percentiles"])
    return _affine(v.x, float(lo), float(hi - lo), where)
