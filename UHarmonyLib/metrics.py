"""Segmentation agreement per label, with MONAI's metric, for label maps on one grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import compute_dice

WHOLE = "whole lesion"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(
        compute_dice(
            torch.from_numpy(a)[None, None].float(), torch.from_numpy(b)[None, None].float(), ignore_empty=False
        )
    )


def dice_scores(pred: sitk.Image, truth: sitk.Image, labels: Sequence[dict[str, Any]] | None) -> dict[str, float]:
    """Dice of each label the truth annotates, and of the whole lesion (every label > 0 together).

    `labels=None` means the truth is a coarse annotation (whole lesion only), so only the
    whole-lesion Dice is defined for it.
    """
    p = sitk.GetArrayViewFromImage(pred)
    t = sitk.GetArrayViewFromImage(truth)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} are on different grids")
    scores = {lab["name"]: _dice(p == lab["value"], t == lab["value"]) for lab in labels or []}
    scores[WHOLE] = _dice(p > 0, t > 0)
    return {k: round(v, 4) for k, v in scores.items()}
