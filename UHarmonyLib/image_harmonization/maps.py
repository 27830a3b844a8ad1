"""Monotone intensity maps shared by the landmark methods (Nyúl, histogram matching)."""

from __future__ import annotations

import numpy as np

from UHarmonyLib.errors import InputError


def piecewise_linear(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """`np.interp`, continued beyond the end landmarks along the end segments' slopes.

    Clipping at the ends (np.interp's behaviour) would flatten every voxel darker or
    brighter than the outer landmarks (lesions, vessels) to one value.
    """
    out = np.interp(x, xp, fp)
    lo, hi = x < xp[0], x > xp[-1]
    out[lo] = fp[0] + (x[lo] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    out[hi] = fp[-1] + (x[hi] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return out


def strictly_increasing(landmarks: np.ndarray, where: str, what: str) -> np.ndarray:
    """Refuse landmarks with ties: the map between them would be undefined."""
    if not np.all(np.diff(landmarks) > 0):
        raise InputError(
            f"{where}: too few distinct foreground intensities for the {what} "
            f"({np.round(landmarks, 4).tolist()}); is the image quantized or mostly constant?"
        )
    return landmarks
