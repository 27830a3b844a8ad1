"""Site weights: the per-sample mixing vector shared by every site-conditioned layer."""

from __future__ import annotations

import torch
from torch import nn


class SiteConditioned(nn.Module):
    """A layer whose parameters are mixed per sample by site weights of shape (B, S).

    Weights are set on the layer right before the backbone runs (the MONAI backbones'
    forward takes only the image), and cleared afterwards.
    """

    def __init__(self, num_sites: int) -> None:
        super().__init__()
        self.num_sites = num_sites
        self.site_weights: torch.Tensor | None = None

    def batch_shares_weights(self) -> bool:
        """Whether every sample has the same site weights (inference: one case-level vector).

        Decided by the weights, never by equal-valued parameter rows: at initialization every site's row
        holds the same values, and each sample must still train its own site's row.
        """
        w = self.site_weights
        return w is None or bool((w == w[:1]).all())

    def mix(self, per_site: torch.Tensor, batch: int, shared: bool = False) -> torch.Tensor:
        """Mix a (S, ...) parameter into (B, ...) with the current site weights; (1, ...) when `shared`.

        The mix is elementwise, so autocast leaves it in the parameter's precision (a matmul would round
        the site weights and the parameters to bfloat16 before any feature map is touched).
        """
        w = self.site_weights
        if w is None:
            if self.num_sites != 1:
                raise RuntimeError("site weights must be set before a multi-site layer runs")
            w = per_site.new_ones(batch, 1)
        if w.shape != (batch, self.num_sites):
            raise ValueError(f"site weights have shape {tuple(w.shape)}, expected ({batch}, {self.num_sites})")
        if shared:
            w = w[:1]
        flat = per_site.reshape(self.num_sites, -1)
        return (w.to(flat.dtype).unsqueeze(-1) * flat).sum(1).reshape(w.shape[0], *per_site.shape[1:])


def one_hot_weights(site_index: int, num_sites: int, batch: int = 1) -> torch.Tensor:
    """One-hot site weights: used when the site is known (training, or named by the user)."""
    w = torch.zeros(batch, num_sites)
    w[:, site_index] = 1.0
    return w
