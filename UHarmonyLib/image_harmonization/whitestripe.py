"""WhiteStripe (Shinohara et al. 2014): normal-appearing white matter as the intensity unit.

The white-matter peak of the foreground histogram (smoothed) is found by the channel's
rule: on T1 the last (brightest) mode, on T2 the first (darkest tissue) mode, otherwise
the largest. The "white stripe" is the voxels whose intensity quantile lies within tau of
the peak's quantile; the image is z-scored by the stripe's mean and standard deviation,
so normal white matter gets mean 0 and sd 1 on every scanner. Lesions, which differ most
between cohorts, do not enter the statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from UHarmonyLib.errors import InputError
from UHarmonyLib.image_harmonization.mask import Voxels

SETTINGS: dict[str, Any] = {"tau": 0.05, "bins": 512, "bandwidth": 1.0, "min_peak": 0.25}


def rule_for(channel: str) -> str:
    """The white-matter mode's rule from the channel name: T1* last, T2* first, anything else largest."""
    name = channel.upper()
    return "last" if name.startswith("T1") else "first" if name.startswith("T2") else "largest"


def fit_channel(channel: str) -> dict[str, Any]:
    return {"mode": rule_for(channel)}


def smoothed_histogram(fg: np.ndarray, settings: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, Gaussian-smoothed counts) between the 0.5th and 99.5th percentiles.

    The kernel is Silverman's rule-of-thumb bandwidth (times `bandwidth`): the histogram
    of a coarse or small image is too noisy for its raw local maxima to mean anything.
    """
    lo, hi = np.percentile(fg, [0.5, 99.5])
    counts, edges = np.histogram(fg, bins=int(settings["bins"]), range=(lo, hi))
    q1, q3 = np.percentile(fg, [25.0, 75.0])
    spread = min(float(fg.std()), float(q3 - q1) / 1.349) or float(fg.std())
    h = float(settings["bandwidth"]) * 0.9 * spread * fg.size ** (-0.2)
    sigma = max(h / (edges[1] - edges[0]), 0.5)
    half = int(np.ceil(4 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    smooth = np.convolve(np.pad(counts.astype(float), half), kernel / kernel.sum(), mode="valid")
    return (edges[:-1] + edges[1:]) / 2, smooth


def white_matter_mode(fg: np.ndarray, rule: str, settings: dict[str, Any]) -> float:
    """The intensity of the white-matter peak: local maxima at least `min_peak` of the highest one."""
    centres, smooth = smoothed_histogram(fg, settings)
    inner = (smooth[1:-1] >= smooth[:-2]) & (smooth[1:-1] > smooth[2:])
    peaks = np.flatnonzero(inner) + 1
    peaks = peaks[smooth[peaks] >= settings["min_peak"] * smooth.max()]
    if len(peaks) == 0:
        peaks = np.array([int(np.argmax(smooth))])
    pick = {"last": peaks[-1], "first": peaks[0], "largest": peaks[np.argmax(smooth[peaks])]}[rule]
    return float(centres[pick])


def stripe(fg: np.ndarray, rule: str, settings: dict[str, Any]) -> np.ndarray:
    """The white-stripe voxels' intensities: quantiles within tau of the white-matter mode's."""
    q = float(np.mean(fg <= white_matter_mode(fg, rule, settings)))
    tau = float(settings["tau"])
    lo, hi = np.quantile(fg, [max(q - tau, 0.0), min(q + tau, 1.0)])
    return fg[(fg >= lo) & (fg <= hi)]


def apply(v: Voxels, settings: dict[str, Any], fitted: dict[str, Any], where: str) -> np.ndarray:
    white = stripe(v.fg, fitted["mode"], settings)
    sd = float(white.std())
    if white.size < 2 or not sd > 0:
        raise InputError(f"{where}: the white stripe holds no intensity spread; cannot normalize by it")
    return (v.x - float(white.mean())) / sd
