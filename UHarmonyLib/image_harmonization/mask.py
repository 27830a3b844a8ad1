"""The foreground every harmonization method measures: Otsu's head mask.

Intensity statistics must come from tissue, not from the air around the head, whose
size depends on the field of view. Otsu's threshold separates the two on MRI without
any model; the largest connected component drops bright specks in the background and
filling holes keeps enclosed dark tissue (ventricles) inside the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from UHarmonyLib.errors import InputError

MIN_SHARE = 0.005  # an image whose foreground is smaller than this share of its voxels has no usable head
MIN_VOXELS = 64


def foreground_mask(image: sitk.Image, where: str) -> np.ndarray:
    """A (z, y, x) boolean head mask of `image`; refuses empty or constant images naming `where`."""
    array = sitk.GetArrayViewFromImage(image)
    lo, hi = float(array.min()), float(array.max())
    if lo == hi:
        what = "an empty image" if lo == 0 else "a constant image"
        raise InputError(f"{where}: {what} (every voxel is {lo:g}); no foreground to measure intensities on")
    otsu = sitk.OtsuThreshold(sitk.Cast(image, sitk.sitkFloat32), 0, 1)
    parts = sitk.RelabelComponent(sitk.ConnectedComponent(otsu), sortByObjectSize=True)
    mask = sitk.GetArrayFromImage(sitk.BinaryFillhole(parts == 1)).astype(bool)
    count = int(mask.sum())
    if count < max(MIN_VOXELS, MIN_SHARE * mask.size):
        raise InputError(
            f"{where}: no foreground found (Otsu's head mask holds {count} of {mask.size} voxels); "
            "is the image empty apart from a few voxels?"
        )
    return mask


@dataclass
class Voxels:
    """An image with its head mask: what every method reads."""

    image: sitk.Image
    mask: np.ndarray  # (z, y, x) bool
    x: np.ndarray  # (z, y, x) float64 intensities

    @property
    def fg(self) -> np.ndarray:
        return self.x[self.mask]


def voxels(image: sitk.Image, where: str) -> Voxels:
    """The image's intensities (float64, for stable percentiles) and head mask; refuses empty images."""
    mask = foreground_mask(image, where)
    return Voxels(image, mask, sitk.GetArrayFromImage(image).astype(np.float64))
