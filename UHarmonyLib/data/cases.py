"""Loading a planned case from its files, as the engine reads a case.

A case's channels are read as `uharmony segment` reads them (first present channel's
grid; other channels resampled onto it), absent model channels become all-zero images
on that grid, and its labels become the case's group indices (see plan.py). Training
moves loaded cases into model space in `training.patches`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from UHarmonyLib.data.plan import PlannedCase
from UHarmonyLib.errors import InputError
from UHarmonyLib.files.volumes import check_values, read_channels, read_image_file, same_grid


@dataclass
class LoadedCase:
    """A case on its own (input) grid: images in model-channel order, labels as group indices."""

    images: list[sitk.Image]
    groups_zyx: np.ndarray  # uint8 group index per voxel of the input grid
    present: list[int]  # model channels the case has (the others are zero images)


def _read_4d(case: PlannedCase) -> list[sitk.Image]:
    """One 4-D (or multi-component) file holding every channel, as 3-D float32 images."""
    path = case.entry.images[0]
    image = read_image_file(path)  # truncation, NaN and ITK's own printing handled as for 3-D channels
    n = len(case.entry.channels)
    if image.GetNumberOfComponentsPerPixel() > 1:
        count = image.GetNumberOfComponentsPerPixel()
        parts = [sitk.VectorIndexSelectionCast(image, k, sitk.sitkFloat32) for k in range(count)]
    elif image.GetDimension() == 4:
        size = list(image.GetSize())
        parts = [sitk.Cast(sitk.Extract(image, [*size[:3], 0], [0, 0, 0, k]), sitk.sitkFloat32) for k in range(size[3])]
    else:
        parts = [sitk.Cast(image, sitk.sitkFloat32)]
    if len(parts) != n:
        raise InputError(f"{path}: holds {len(parts)} volume(s) but the dataset names {n} channels")
    for p in parts:
        check_values(sitk.GetArrayViewFromImage(p), path)
    return parts


def load_case(case: PlannedCase, num_channels: int) -> LoadedCase:
    """Read a case's files: images in model-channel order (zeros where absent) and its group map."""
    names = [str(c) for c in case.entry.channels]
    images = _read_4d(case) if case.four_d else read_channels(case.entry.images, names)
    reference = images[0]
    blank = sitk.Image(reference.GetSize(), sitk.sitkFloat32)
    blank.CopyInformation(reference)
    ordered = [blank] * num_channels
    for image, channel in zip(images, case.channels):
        ordered[channel] = image
    path = case.entry.label
    label = read_image_file(path)
    if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: a label map must be a 3-D scalar image")
    if not same_grid(label, reference):  # plan_training refuses these first; a direct caller gets the same line
        raise InputError(f"{path}: label map is not on its image's grid (size, spacing, origin or direction differ)")
    values = sitk.GetArrayFromImage(label)
    found = np.unique(values)
    unknown = [v for v in found.tolist() if v not in case.value_map]
    if unknown:
        raise InputError(
            f"{path}: label value {unknown[0]:g} is not one of the case's labels "
            f"({', '.join(f'{v}' for v in sorted(case.value_map))})"
        )
    lut = {int(v): case.value_map[int(v)] for v in found.tolist()}
    groups = np.zeros(values.shape, dtype=np.uint8)
    for v, g in lut.items():
        if g:
            groups[values == v] = g
    return LoadedCase(ordered, groups, sorted(case.channels))


def model_spacing(images: list[sitk.Image], orientation: str) -> tuple[float, float, float]:
    """A case's voxel size along the model axes (after reorientation)."""
    shell = sitk.Image([2, 2, 2], sitk.sitkUInt8)
    shell.SetSpacing(images[0].GetSpacing())
    shell.SetDirection(images[0].GetDirection())
    return tuple(float(s) for s in sitk.DICOMOrient(shell, orientation).GetSpacing())  # type: ignore[return-value]
