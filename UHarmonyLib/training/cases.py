"""Cases into model space with the inference engine's own functions, cached in memory.

A case's channels are read as `uharmony segment` reads them (first present channel's
grid; other channels resampled onto it), absent model channels become all-zero images
on that grid, and `ModelSpace` + `model_input` (harmonization, if any, then
normalization) make the arrays, so a trained bundle sees at inference exactly what it
saw in training. Labels move to the model grid by nearest neighbour and become the
case's group indices (see plan.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from UHarmonyLib.errors import InputError
from UHarmonyLib.preprocessing import ModelSpace, model_input
from UHarmonyLib.training.plan import PlannedCase
from UHarmonyLib.volumes import check_values, read_channels, same_grid
from UHarmonyLib.windows import pad_to_roi


@dataclass
class LoadedCase:
    """A case on its own (input) grid: images in model-channel order, labels as group indices."""

    images: list[sitk.Image]
    groups_zyx: np.ndarray  # uint8 group index per voxel of the input grid
    present: list[int]  # model channels the case has (the others are zero images)


@dataclass
class PreparedCase:
    """A training case in model space, padded to at least one patch, with crop-centre candidates."""

    image: torch.Tensor  # (C, x, y, z) float32
    target: torch.Tensor  # (1, x, y, z) uint8 group indices
    fg: np.ndarray  # ravelled indices of lesion voxels
    bg: np.ndarray  # ravelled indices of labelled-background voxels inside the head
    present: list[int]


def _read_4d(case: PlannedCase) -> list[sitk.Image]:
    """One 4-D (or multi-component) file holding every channel, as 3-D float32 images."""
    path = case.entry.images[0]
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"{path}: cannot read image ({str(e).strip().splitlines()[-1]})") from e
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
    try:
        label = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"{path}: cannot read label map ({str(e).strip().splitlines()[-1]})") from e
    if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: a label map must be a 3-D scalar image")
    if not same_grid(label, reference):
        if label.GetSize() != reference.GetSize():
            raise InputError(f"{path}: label map size {label.GetSize()} differs from the image's {reference.GetSize()}")
        label = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
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


def _label_to_model(space: ModelSpace, groups_zyx: np.ndarray) -> np.ndarray:
    """The group map on the model grid (x, y, z): nearest neighbour, never blended."""
    img = sitk.GetImageFromArray(groups_zyx)
    img.CopyInformation(space.reference)
    if space.resampled:
        moved = sitk.Resample(img, space.grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    else:
        moved = sitk.DICOMOrient(img, space.orientation)
    return np.ascontiguousarray(sitk.GetArrayViewFromImage(moved).transpose(2, 1, 0))


def prepare_case(
    loaded: LoadedCase,
    preprocessing: dict[str, Any],
    patch: tuple[int, ...],
    channels: Sequence[str] = (),
    where: str = "training case",
) -> PreparedCase:
    """Model-space arrays exactly as the inference engine builds them, padded like its windows.

    `channels` (the model's channel names) is needed when `preprocessing` harmonizes.
    """
    space = ModelSpace.for_image(loaded.images[0], preprocessing)
    image = model_input(space, loaded.images, preprocessing, channels, where)
    image = (image.as_tensor() if isinstance(image, MetaTensor) else image).float().contiguous()
    target = torch.from_numpy(_label_to_model(space, loaded.groups_zyx))[None]
    image = pad_to_roi(image[None], patch)[0]
    target = pad_to_roi(target[None], patch)[0]
    flat = target[0].numpy().ravel()
    head = (image != 0).any(0).numpy().ravel()
    fg = np.flatnonzero(flat > 0)
    bg = np.flatnonzero((flat == 0) & head)
    if bg.size == 0:
        bg = np.flatnonzero(flat == 0)
    return PreparedCase(image, target.to(torch.uint8), fg, bg, loaded.present)


def model_spacing(images: list[sitk.Image], orientation: str) -> tuple[float, float, float]:
    """A case's voxel size along the model axes (after reorientation)."""
    shell = sitk.Image([2, 2, 2], sitk.sitkUInt8)
    shell.SetSpacing(images[0].GetSpacing())
    shell.SetDirection(images[0].GetDirection())
    return tuple(float(s) for s in sitk.DICOMOrient(shell, orientation).GetSpacing())  # type: ignore[return-value]
