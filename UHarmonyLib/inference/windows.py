"""Sliding-window positions, the same ones MONAI's sliding_window_inference visits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data.utils import dense_patch_slices


def pad_to_roi(x: torch.Tensor, roi: Sequence[int]) -> torch.Tensor:
    """Pad (B, C, *spatial) symmetrically to at least `roi`, as MONAI does before windowing."""
    pads: list[int] = []
    for size, r in zip(reversed(x.shape[2:]), reversed(roi)):
        extra = max(r - size, 0)
        pads += [extra // 2, extra - extra // 2]
    return F.pad(x, pads) if any(pads) else x


def scan_interval(size: int, roi: int, overlap: float) -> int:
    """MONAI's step between window starts along one axis of a (padded) `size`."""
    return roi if roi == size else max(int(roi * (1 - overlap)), 1)


def window_slices(shape: Sequence[int], roi: Sequence[int], overlap: float) -> list[tuple[slice, ...]]:
    """Window slices over a (padded) spatial shape, with MONAI's scan interval rule."""
    interval = [scan_interval(s, r, overlap) for s, r in zip(shape, roi)]
    return [tuple(s) for s in dense_patch_slices(list(shape), list(roi), interval)]


def covered_length(length: int, roi: int, overlap: float) -> int:
    """The longest axis that needs no more windows than `length` does: whole steps from the first window."""
    if length <= roi:
        return roi
    step = scan_interval(length, roi, overlap)
    return -(-(length - roi) // step) * step + roi
