"""Training cases in model space, made with the inference engine's own functions.

`ModelSpace` + `model_input` (harmonization, if any, then normalization) make the
arrays, so a trained bundle sees at inference exactly what it saw in training. Labels
move to the model grid by nearest neighbour, never blended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from UHarmonyLib.data.cases import LoadedCase
from UHarmonyLib.inference.preprocessing import ModelSpace, model_input
from UHarmonyLib.inference.windows import pad_to_roi


@dataclass
class PreparedCase:
    """A training case in model space, padded to at least one patch, with crop-centre candidates."""

    image: torch.Tensor  # (C, x, y, z) float32
    target: torch.Tensor  # (1, x, y, z) uint8 group indices
    fg: np.ndarray  # ravelled indices of lesion voxels
    bg: np.ndarray  # ravelled indices of labelled-background voxels inside the head
    present: list[int]


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
