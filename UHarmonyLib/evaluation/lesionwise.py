"""BraTS-style lesion-wise Dice: every lesion of the reference counts once, whatever its size.

Voxel Dice is carried by the largest lesion: a model that outlines one big lesion and
misses five small ones scores almost as well as one that finds all six. Lesion-wise Dice
scores each reference lesion (a 26-connected component) on its own, against the union of
the predicted components that overlap it, and counts every predicted component that
overlaps no lesion as a false positive scoring 0:

    lesion-wise Dice = sum of per-lesion Dice / (reference lesions + false-positive components)

The project's scoring rule holds (evaluation/scoring.py): an empty reference has no Dice
(None), whatever the prediction holds. A predicted component that overlaps two lesions is
part of both lesions' unions, as in BraTS.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def components(mask: np.ndarray, min_size: int = 0) -> np.ndarray:
    """Component index per voxel (0 outside) with 26-connectivity; components under `min_size` voxels dropped."""
    labels = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
    if min_size > 0:
        labels = sitk.RelabelComponent(labels, minimumObjectSize=min_size)
    return sitk.GetArrayFromImage(labels)


def lesion_dice(pred: np.ndarray, truth: np.ndarray, min_size: int = 0) -> float | None:
    """Lesion-wise Dice of two binary masks on one grid; None when the reference has no lesion.

    `min_size` (voxels): components of either mask smaller than this are ignored, as if
    absent. BraTS drops components under a volume threshold so that specks do not count as
    lesions or false positives; the default 0 keeps every component, because a voxel count
    means a different volume at every spacing and a threshold is the protocol's choice, not
    the metric's. A threshold that removes every reference lesion leaves no Dice (None).

    Each lesion's Dice is counted from voxel counts (2 |L & U| / (|L| + |U|), the formula
    MONAI's DiceMetric computes) rather than by one full-volume metric call per lesion.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and reference {truth.shape} are on different grids")
    ref = components(truth, min_size)
    lesions = int(ref.max())
    if lesions == 0:
        return None
    found = components(pred, min_size)
    both = (ref > 0) & (found > 0)
    # (lesion, predicted component) pairs that share a voxel
    pairs = np.unique(np.stack([ref[both], found[both]]), axis=1)
    lesion_size = np.bincount(ref.ravel(), minlength=lesions + 1)
    found_size = np.bincount(found.ravel())
    # every predicted voxel inside a lesion belongs to a component overlapping it, so |L & U| = |L & pred|
    overlap = np.bincount(ref[both], minlength=lesions + 1)
    union_size = np.bincount(pairs[0], weights=found_size[pairs[1]], minlength=lesions + 1)
    per_lesion = 2.0 * overlap[1:] / (lesion_size[1:] + union_size[1:])
    false_positives = (len(found_size) - 1) - len(np.unique(pairs[1]))
    return float(per_lesion.sum() / (lesions + false_positives))
