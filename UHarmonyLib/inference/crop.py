"""The part of a case the sliding windows visit: its foreground's box, widened to whole windows.

A window of pure background costs a full forward pass and says nothing (a fifth of the MNI
template's voxels are non-zero; at 1 mm its box needs 27 of the volume's 48 windows of 96^3).
As nnU-Net crops to the non-zero region, the engine runs both passes on the bounding box of
the voxels that are non-zero in any channel (MONAI's `generate_spatial_bounding_box`),
decided on the model-space channels before intensity normalization, since a z-score
without `nonzero` moves the background off 0.
The box gets `MARGIN` voxels of background on each side, and then as much more as the same
number of windows covers anyway (more context at no cost, and evenly spaced windows); it is
placed inside the volume. A case with no non-zero voxel keeps the whole volume, as before.

The network's input then depends only on the foreground and the zeros around it: the same
head inside a larger empty field gets the same windows and the same labels (where the box
fits inside both volumes; at an edge it is moved, and the windows shift with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms.utils import generate_spatial_bounding_box

from UHarmonyLib.inference.windows import covered_length

MARGIN = 4  # model-space voxels of background kept beyond the foreground on every side, at least


@dataclass(frozen=True)
class Box:
    """Where the windows run, in a model-space volume of `shape`."""

    shape: tuple[int, ...]
    slices: tuple[slice, ...]

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.slices)

    @property
    def whole(self) -> bool:
        return self.size == self.shape

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """The box of a (..., x, y, z) tensor."""
        sx, sy, sz = self.slices
        return x[..., sx, sy, sz]

    def paste(self, part: np.ndarray, fill: float) -> np.ndarray:
        """A (x, y, z) array of the box back in the whole volume, `fill` outside it."""
        if self.whole:
            return part
        out = np.full(self.shape, fill, dtype=part.dtype)
        out[self.slices] = part
        return out


def _place(start: int, stop: int, length: int, size: int) -> slice:
    """`length` voxels centred on [start, stop), moved inside [0, size) (all of it when longer)."""
    if length >= size:
        return slice(0, size)
    first = min(max(start - (length - (stop - start)) // 2, 0), size - length)
    return slice(first, first + length)


def foreground_box(
    channels: np.ndarray | torch.Tensor, roi: Sequence[int], overlap: float, margin: int = MARGIN
) -> Box:
    """The box of a (C, x, y, z) model-space case (before normalization) that the windows need to cover."""
    shape = tuple(int(s) for s in channels.shape[1:])
    # allow_smaller=False: the margin is counted beyond the volume's edge too, so the box's length (and with
    # it the number of windows) does not depend on how close to the edge the head lies
    start, stop = generate_spatial_bounding_box(channels, lambda a: a != 0, margin=margin, allow_smaller=False)
    if stop[0] <= start[0]:  # MONAI's empty box: no foreground at all
        return Box(shape, tuple(slice(0, s) for s in shape))
    slices = tuple(
        _place(int(a), int(b), covered_length(int(b - a), r, overlap), s) for a, b, r, s in zip(start, stop, roi, shape)
    )
    return Box(shape, slices)
