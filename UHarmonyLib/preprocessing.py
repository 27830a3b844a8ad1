"""From the input grid to the model's grid and back, exactly.

Reorientation is a pure axis permutation/flip (SimpleITK's DICOMOrient), and resampling
happens only when the spacing differs from the model's, so a volume already at the
model's spacing makes the round trip without any interpolation. The array axis order
in model space is (x, y, z) in the card's orientation, which is what MONAI's
LoadImage + Orientation produce, so training with MONAI transforms sees the same arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.transforms import NormalizeIntensity, ScaleIntensityRangePercentiles

SPACING_TOLERANCE = 1e-3


@dataclass
class ModelSpace:
    """The geometry mapping of one case between its input grid and the model's grid."""

    reference: sitk.Image  # the first channel as read: the output grid
    grid: sitk.Image  # an empty image carrying the model-space geometry
    orientation: str
    resampled: bool

    @classmethod
    def for_image(cls, reference: sitk.Image, preprocessing: dict[str, Any]) -> ModelSpace:
        orientation = preprocessing["orientation"]
        shell = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
        shell.CopyInformation(reference)
        oriented = sitk.DICOMOrient(shell, orientation)
        target = np.asarray(preprocessing["spacing"], dtype=float)
        spacing = np.asarray(oriented.GetSpacing())
        if np.allclose(spacing, target, rtol=SPACING_TOLERANCE, atol=0):
            return cls(reference, oriented, orientation, resampled=False)
        size = np.maximum(np.round(np.asarray(oriented.GetSize()) * spacing / target), 1).astype(int)
        grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
        grid.SetSpacing(target.tolist())
        grid.SetOrigin(oriented.GetOrigin())
        grid.SetDirection(oriented.GetDirection())
        return cls(reference, grid, orientation, resampled=True)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.grid.GetSize())  # type: ignore[return-value]

    def to_model(self, image: sitk.Image) -> np.ndarray:
        """A channel on the reference grid as an (x, y, z) float32 array on the model grid."""
        if self.resampled:
            moved = sitk.Resample(image, self.grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        else:
            moved = sitk.DICOMOrient(image, self.orientation)
        return np.ascontiguousarray(sitk.GetArrayViewFromImage(moved).transpose(2, 1, 0))

    def to_input(self, array: np.ndarray, interpolator: int = sitk.sitkNearestNeighbor) -> sitk.Image:
        """An (x, y, z[, K]) array on the model grid, as an image on the exact input grid.

        Without resampling this is the inverse axis permutation (exact); otherwise
        SimpleITK resamples in physical space with `interpolator`.
        """
        vector = array.ndim == 4
        zyx = array.transpose(2, 1, 0, 3) if vector else array.transpose(2, 1, 0)
        img = sitk.GetImageFromArray(np.ascontiguousarray(zyx), isVector=vector)
        img.CopyInformation(self.grid)
        if self.resampled:
            # the model grid's rounded size can end more than half a voxel before the input's last voxel
            # centres: extend its edge values there instead of padding with 0 (which is no probability)
            return sitk.Resample(
                img, self.reference, sitk.Transform(), interpolator, 0.0, useNearestNeighborExtrapolator=True
            )
        code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(self.reference.GetDirection())
        back = sitk.DICOMOrient(img, code)
        back.CopyInformation(self.reference)
        return back

    def array_to_input(self, array_zyx: np.ndarray) -> sitk.Image:
        """An array already on the input grid (z, y, x), as an image with the input's geometry."""
        img = sitk.GetImageFromArray(array_zyx)
        img.CopyInformation(self.reference)
        return img


def stack_channels(space: ModelSpace, images: Sequence[sitk.Image]) -> np.ndarray:
    """All channels on the model grid as one (C, x, y, z) float32 array."""
    return np.stack([space.to_model(im) for im in images])


def normalize(channels: np.ndarray, intensity: dict[str, Any]) -> torch.Tensor:
    """Per-channel intensity normalization as the model card says, with MONAI transforms."""
    x = torch.from_numpy(channels)
    method = intensity.get("method", "zscore")
    if method == "zscore":
        return NormalizeIntensity(nonzero=bool(intensity.get("nonzero", True)), channel_wise=True)(x)
    if method == "percentile":
        lo, hi = intensity.get("percentiles", [0.5, 99.5])
        return torch.stack([ScaleIntensityRangePercentiles(lo, hi, 0.0, 1.0, clip=True)(c) for c in x])
    raise ValueError(f"unknown intensity normalization '{method}'")
