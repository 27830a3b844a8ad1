"""Nyúl–Udupa histogram standardization (Nyúl & Udupa 1999; Nyúl, Udupa & Zhang 2000).

Fitting: each training image's foreground landmarks (percentiles) are mapped linearly so
that its first and last landmarks land on the ends of a standard scale; the mean of the
mapped landmarks is the standard scale. Applying: an image's own landmarks are mapped
onto the standard ones, piecewise linearly. Unlike a z-score this also undoes monotone
contrast changes (gamma, different tissue spacing), which is what differs between
scanners beyond gain and offset.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from UHarmonyLib.errors import InputError
from UHarmonyLib.image_harmonization.maps import piecewise_linear, strictly_increasing
from UHarmonyLib.image_harmonization.mask import Voxels

SETTINGS: dict[str, Any] = {"percentiles": [1.0, *(float(p) for p in range(10, 100, 10)), 99.0], "scale": [0.0, 100.0]}


def landmarks(fg: np.ndarray, settings: dict[str, Any], where: str) -> np.ndarray:
    return strictly_increasing(np.percentile(fg, settings["percentiles"]), where, "Nyúl landmarks")


def fit(samples: Iterable[tuple[str, np.ndarray]], settings: dict[str, Any], channel: str) -> dict[str, Any]:
    """The standard landmarks of one channel: the mean of every image's landmarks mapped onto the scale."""
    s0, s1 = settings["scale"]
    mapped = []
    for where, fg in samples:
        m = landmarks(fg, settings, where)
        mapped.append(s0 + (m - m[0]) / (m[-1] - m[0]) * (s1 - s0))
    if not mapped:
        raise InputError(f"channel {channel}: no images to learn Nyúl landmarks from")
    standard = np.mean(mapped, axis=0)
    return {"standard": [round(float(v), 6) for v in standard], "images": len(mapped)}


def apply(v: Voxels, settings: dict[str, Any], fitted: dict[str, Any], where: str) -> np.ndarray:
    return piecewise_linear(v.x, landmarks(v.fg, settings, where), np.asarray(fitted["standard"], dtype=np.float64))
