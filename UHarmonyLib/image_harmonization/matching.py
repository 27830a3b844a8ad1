"""Histogram matching to a reference image (SimpleITK's HistogramMatchingImageFilter).

Fitting picks the reference per channel: the most typical training image (the medoid by
1-D Wasserstein distance between robustly scaled foreground histograms), and stores its
foreground quantile function, not the image (parameters stay small, plain JSON). A
reference sample drawn from those quantiles has the reference's histogram, which is all
the filter reads. The filter sees only the foreground voxels (its own background rule,
"above the mean intensity", depends on the field of view), and its monotone map is then
continued to the whole image.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import SimpleITK as sitk

from UHarmonyLib.errors import InputError
from UHarmonyLib.image_harmonization.maps import piecewise_linear
from UHarmonyLib.image_harmonization.mask import Voxels

SETTINGS: dict[str, Any] = {"quantiles": 257, "histogram_levels": 1024, "match_points": 64}
REFERENCE_SAMPLE = 8192  # values drawn from the stored quantile function as the filter's reference


def _probabilities(settings: dict[str, Any]) -> np.ndarray:
    return np.linspace(0.0, 1.0, int(settings["quantiles"]))


def _column(values: np.ndarray) -> sitk.Image:
    return sitk.GetImageFromArray(np.ascontiguousarray(values, dtype=np.float64).reshape(-1, 1, 1))


def fit(samples: Iterable[tuple[str, np.ndarray]], settings: dict[str, Any], channel: str) -> dict[str, Any]:
    """The reference quantiles of one channel: those of its medoid image."""
    probs = _probabilities(settings)
    raw, shapes = [], []
    for _where, fg in samples:
        q = np.quantile(fg, probs)
        q1, q2, q3 = np.quantile(fg, [0.25, 0.5, 0.75])
        raw.append(q)
        shapes.append((q - q2) / max(q3 - q1, 1e-12))
    if not raw:
        raise InputError(f"channel {channel}: no images to choose a histogram-matching reference from")
    shape = np.asarray(shapes)
    w1 = np.abs(shape[:, None, :] - shape[None, :, :]).mean(-1)  # W1 between quantile functions
    medoid = int(np.argmin(w1.sum(1)))
    return {"reference": [float(f"{v:.7g}") for v in raw[medoid]], "reference_index": medoid, "images": len(raw)}


def apply(v: Voxels, settings: dict[str, Any], fitted: dict[str, Any], where: str) -> np.ndarray:
    fg = v.fg
    reference = np.interp(
        np.linspace(0.0, 1.0, REFERENCE_SAMPLE), np.linspace(0.0, 1.0, len(fitted["reference"])), fitted["reference"]
    )
    matched = sitk.GetArrayFromImage(
        sitk.HistogramMatching(
            _column(fg),
            _column(reference),
            numberOfHistogramLevels=int(settings["histogram_levels"]),
            numberOfMatchPoints=int(settings["match_points"]),
            thresholdAtMeanIntensity=False,
        )
    ).ravel()
    probs = _probabilities(settings)
    xp, keep = np.unique(np.quantile(fg, probs), return_index=True)  # the map at the foreground's quantiles
    if len(xp) < 2:
        raise InputError(f"{where}: the foreground has a single intensity; nothing to match")
    return piecewise_linear(v.x, xp, np.quantile(matched, probs)[keep])
