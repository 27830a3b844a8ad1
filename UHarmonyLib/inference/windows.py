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


def window_slices(shape: Sequence[int], roi: Sequence[int], overlap: float) -> list[tuple[slice, ...]]:
    """Window slices over a (padded) spatial shape, with MONAI's scan interval rule."""
    interval = [r if r == s else max(int(r * (1 - overlap)), 1) for s, r in zip(shape, roi)]
    return [tuple(s) for s in dense_patch_slices(list(shape), list(roi), interval)]
