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

from UHarmonyLib import image_harmonization

SPACING_TOLERANCE = 1e-3


FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def _anti_alias(image: sitk.Image, target_spacing: Sequence[float]) -> sitk.Image:
    """Blur before downsampling so the model sees what a coarser acquisition would give.

    Without it, a 1 mm scan resampled to a 2 mm model keeps its full 1 mm noise and
    aliasing, and the model (trained at 2 mm) segments noise: on the bundled sample the
    whole-lesion Dice went from 0.40 without to 0.72 with this filter. Each physical axis
    gets the Gaussian that widens its resolution (FWHM) from the input to the target.
    """
    src = np.asarray(image.GetSpacing())
    direction = np.abs(np.asarray(image.GetDirection()).reshape(3, 3))
    # target spacing along each image axis: the model grid is a permutation of the image axes
    target = np.asarray(target_spacing)[direction.T.argmax(1)] if direction.any() else np.asarray(target_spacing)
    sigma = np.sqrt(np.clip(target**2 - src**2, 0.0, None)) / FWHM_PER_SIGMA
    if not (sigma > 0.1 * src).any():
        return image
    return sitk.DiscreteGaussian(image, [float(v) ** 2 for v in sigma], 32, 0.01, True)


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
        x, y, z = self.grid.GetSize()
        return int(x), int(y), int(z)

    def to_model(self, image: sitk.Image) -> np.ndarray:
        """A channel on the reference grid as an (x, y, z) float32 array on the model grid."""
        if self.resampled:
            moved = sitk.Resample(
                _anti_alias(image, self.grid.GetSpacing()),
                self.grid,
                sitk.Transform(),
                sitk.sitkLinear,
                0.0,
                sitk.sitkFloat32,
            )
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
        return _tensor(NormalizeIntensity(nonzero=bool(intensity.get("nonzero", True)), channel_wise=True)(x))
    if method == "percentile":
        lo, hi = intensity.get("percentiles", [0.5, 99.5])
        return torch.stack([_tensor(ScaleIntensityRangePercentiles(lo, hi, 0.0, 1.0, clip=True)(c)) for c in x])
    raise ValueError(f"unknown intensity normalization '{method}'")


def _tensor(out: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A plain tensor: MONAI's transforms return a MetaTensor, whose per-operation metadata handling costs the
    network's forward passes about a tenth of their time (benchmarks/inference.py's overhead_ratio)."""
    assert isinstance(out, torch.Tensor)
    return out.as_subclass(torch.Tensor)


def model_channels(
    space: ModelSpace,
    images: Sequence[sitk.Image],
    preprocessing: dict[str, Any],
    channels: Sequence[str],
    where: str = "case",
) -> np.ndarray:
    """The (C, x, y, z) channels before normalization: harmonized (if the card says so), on the model grid.

    Training cases and `uharmony segment` both come through here, so a card's stored
    harmonization is repeated exactly. It runs on the input grid, before any resampling,
    so `uharmony harmonize` of a file and then segmenting it gives the same input. Cards
    without `harmonize` (all bundles before it existed) skip the step. Harmonization keeps
    exact zeros at 0, so the engine decides its crop (`inference/crop.py`) on this array.
    """
    params = preprocessing.get("harmonize")
    if params is not None:
        images = image_harmonization.apply_channels(images, params, channels, where)
    return stack_channels(space, images)


def model_input(
    space: ModelSpace,
    images: Sequence[sitk.Image],
    preprocessing: dict[str, Any],
    channels: Sequence[str],
    where: str = "case",
) -> torch.Tensor:
    """The (C, x, y, z) network input: `model_channels`, then intensity normalization."""
    return normalize(model_channels(space, images, preprocessing, channels, where), preprocessing["intensity"])
