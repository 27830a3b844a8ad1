"""The project's one scoring rule: Dice and 95 % Hausdorff distance with MONAI's metrics, lesion-wise Dice.

Every command and benchmark scores through here, so `demo`, `evaluate`, training
validation and the tables agree on every case. A label the reference does not contain
has no defined Dice or HD95 (None, left out of means), whatever the prediction holds: an
empty reference says nothing about how well a lesion was outlined, and scoring it 1 or 0
would move means by what a case lacks rather than by what the model did.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric

from UHarmonyLib.data.labels import WHOLE_LABEL
from UHarmonyLib.evaluation.lesionwise import lesion_dice

WHOLE = WHOLE_LABEL  # every label > 0 together


def mean_defined(values: Sequence[float | None]) -> float | None:
    """Mean of the defined values (None left out), rounded for reports; None when none is defined."""
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 4) if kept else None


def _finite(x: torch.Tensor | Sequence[Any]) -> float | None:
    """The one value of a metric's result on one pair of masks; None when it is not finite."""
    assert isinstance(x, torch.Tensor)  # MONAI's metrics called with one pair of tensors return one tensor
    v = float(x.reshape(-1)[0])
    return v if math.isfinite(v) else None


def _tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(mask.astype(np.float32))[None, None]


def dice(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """Dice of two binary masks; None when the reference is empty."""
    if not truth.any():
        return None
    return _finite(
        DiceMetric(include_background=True, reduction="none", ignore_empty=True)(_tensor(pred), _tensor(truth))
    )


def score_masks(pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[float | None, float | None]:
    """(Dice, 95 % Hausdorff distance in mm) of two binary (z, y, x) masks; None where undefined."""
    overlap = dice(pred, truth)
    if overlap is None or not pred.any():
        return overlap, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(
            _tensor(pred), _tensor(truth), spacing=[float(s) for s in spacing_zyx]
        )
    return overlap, _finite(hd)


def _case_masks(
    pred: np.ndarray, groups: Sequence[Sequence[int]], label_names: Sequence[str], truth_groups: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(prediction, reference) masks per label a case annotates, plus the whole lesion, in the case's own labels."""
    masks = {name: (np.isin(pred, groups[g]), truth_groups == g) for g, name in enumerate(label_names, start=1)}
    masks.setdefault(WHOLE, (~np.isin(pred, groups[0]), truth_groups > 0))
    return masks


def score_case(
    pred: np.ndarray,
    groups: Sequence[Sequence[int]],
    label_names: Sequence[str],
    truth_groups: np.ndarray,
    spacing_zyx: Sequence[float],
) -> dict[str, tuple[float | None, float | None]]:
    """(Dice, HD95) per label a case annotates, plus the whole lesion, scored in the case's own labels.

    `groups[g]` lists the predicted label values that group g covers (group 0: background and
    every value the case does not annotate); `truth_groups` holds the case's group index per voxel.
    """
    masks = _case_masks(pred, groups, label_names, truth_groups)
    return {name: score_masks(p, t, spacing_zyx) for name, (p, t) in masks.items()}


def lesion_scores(
    pred: np.ndarray,
    groups: Sequence[Sequence[int]],
    label_names: Sequence[str],
    truth_groups: np.ndarray,
    min_size: int = 0,
) -> dict[str, float | None]:
    """Lesion-wise Dice (evaluation/lesionwise.py) per label a case annotates, plus the whole lesion.

    The same labels and masks as `score_case`; kept apart from it because connected
    components are worth their cost in a report, not in every training validation.
    """
    masks = _case_masks(pred, groups, label_names, truth_groups)
    return {name: lesion_dice(p, t, min_size) for name, (p, t) in masks.items()}


def dice_scores(
    pred: sitk.Image, truth: sitk.Image, labels: Sequence[dict[str, Any]] | None
) -> dict[str, float | None]:
    """Dice of each label, and of the whole lesion (every label > 0 together), for two label maps on one grid.

    `labels=None` means the truth is a coarse annotation (whole lesion only), so only the
    whole-lesion Dice is defined for it.
    """
    p = sitk.GetArrayViewFromImage(pred)
    t = sitk.GetArrayViewFromImage(truth)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} are on different grids")
    masks = {lab["name"]: (p == lab["value"], t == lab["value"]) for lab in labels or []}
    masks[WHOLE] = (p > 0, t > 0)
    scores = {name: dice(a, b) for name, (a, b) in masks.items()}
    return {k: None if v is None else round(v, 4) for k, v in scores.items()}
