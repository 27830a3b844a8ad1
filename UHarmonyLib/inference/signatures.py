"""Scanner signatures of a case's inference windows, and a signature bank built from them.

Training, add-site and federated sites build their bundle's bank with the same windows
the engine's gate pass uses (over the same foreground box), so a case at inference is
measured the way the bank was. Their images are normalized already; training's z-score
over non-zero voxels keeps the background at exactly 0, so their box is the raw one.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from UHarmonyLib.inference.crop import foreground_box
from UHarmonyLib.inference.windows import pad_to_roi, window_slices
from UHarmonyLib.model.signature_bank import SignatureBank
from UHarmonyLib.nn.gate_network import DomainGate


@torch.no_grad()
def window_vectors(
    gate: DomainGate, image: torch.Tensor, roi: tuple[int, ...], overlap: float, batch: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Signatures and foreground weights of the inference windows of one (C, *spatial) model-space image."""
    padded = pad_to_roi(foreground_box(image, roi, overlap).take(image)[None], roi)
    slices = window_slices(padded.shape[2:], roi, overlap)
    vecs, weights = [], []
    for start in range(0, len(slices), batch):
        patches = torch.cat([padded[(slice(None), slice(None), *s)] for s in slices[start : start + batch]])
        vecs.append(gate.features(patches).float().cpu())
        weights.append((patches != 0).flatten(1).float().mean(1).cpu())
    return torch.cat(vecs), torch.cat(weights)


def build_bank(
    gate: DomainGate, images: Iterable[torch.Tensor], sites: list[int], roi: tuple[int, ...], overlap: float
) -> SignatureBank:
    """A bank from model-space case images (one per case, read one at a time) and their site indices."""
    parts = [window_vectors(gate, img, roi, overlap) for img in images]
    return SignatureBank(
        torch.cat([v for v, _ in parts]),
        torch.cat([torch.full((len(v),), s, dtype=torch.long) for (v, _), s in zip(parts, sites)]),
        torch.cat([torch.full((len(v),), i, dtype=torch.long) for i, (v, _) in enumerate(parts)]),
        torch.cat([w for _, w in parts]),
    )
