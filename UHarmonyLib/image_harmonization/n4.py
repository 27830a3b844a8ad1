"""N4 bias-field correction (Tustison et al. 2010, SimpleITK's N4BiasFieldCorrectionImageFilter).

Coil sensitivity multiplies the signal by a smooth field that differs between scanners
and even between visits. N4 fits the log field with B-splines inside the foreground
mask. The field varies over centimetres, so it is fitted on a grid shrunk to about
`shrink_mm` voxels (about a second per image) and then evaluated on the full grid. N4
needs positive intensities, so the image is shifted to start near zero first and
shifted back after: only the field is removed, the intensity scale is kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from UHarmonyLib.image_harmonization.mask import Voxels

SETTINGS: dict[str, Any] = {"shrink_mm": 8.0, "iterations": [50, 50, 50], "convergence": 0.001, "control_points": 4}


def _fit(image: sitk.Image, mask: np.ndarray, settings: dict[str, Any]) -> tuple[Any, sitk.Image, sitk.Image]:
    """(the fitted filter, the positive image, the shrunk mask it was fitted in)."""
    array = sitk.GetArrayViewFromImage(image)
    positive = sitk.Cast(image, sitk.sitkFloat32) - float(array.min()) + 1e-3 * float(np.ptp(array))
    mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_image.CopyInformation(image)
    factors = [max(1, round(float(settings["shrink_mm"]) / s)) for s in image.GetSpacing()]
    small_mask = sitk.Shrink(mask_image, factors)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in settings["iterations"]])
    n4.SetConvergenceThreshold(float(settings["convergence"]))
    n4.SetNumberOfControlPoints([int(settings["control_points"])] * 3)
    n4.Execute(sitk.Shrink(positive, factors), small_mask)
    return n4, positive, small_mask


def bias_strength(image: sitk.Image, mask: np.ndarray, settings: dict[str, Any]) -> float:
    """The sd of the fitted log field inside the (shrunk) mask: about the field's coefficient of variation."""
    n4, _, small_mask = _fit(image, mask, settings)
    field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(small_mask))
    return float(field[sitk.GetArrayViewFromImage(small_mask) > 0].std())


def correct(v: Voxels, settings: dict[str, Any], fitted: dict[str, Any], where: str) -> np.ndarray:
    """The image divided by its bias field (in the shifted, positive domain), shifted back."""
    n4, positive, _ = _fit(v.image, v.mask, settings)
    field = np.exp(sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(positive)))
    shifted = sitk.GetArrayFromImage(positive)
    return shifted / field + (float(v.x.min()) - float(shifted.min()))
