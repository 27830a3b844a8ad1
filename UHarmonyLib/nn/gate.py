"""Domain gate: recognizes an image's site from cheap, strongly site-dependent signals.

The gate has its own one-layer filter bank and looks only at the mean and log standard
deviation of each filter's response over the patch (noise, blur, contrast and gamma all
move these). It is independent of the backbone, so its input vectors stay meaningful
when the backbone is fine-tuned, and a bank of such vectors per site can stand in for
old sites' images when a new site is added.
"""

from __future__ import annotations

import torch
from torch import nn


class DomainGate(nn.Module):
    """Site logits from per-patch filter-response statistics."""

    def __init__(
        self,
        in_channels: int,
        num_sites: int,
        stem_channels: int = 16,
        hidden: int = 64,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.stem = conv(in_channels, stem_channels, kernel_size=3, padding=1)
        self.classifier = nn.Sequential(nn.Linear(2 * stem_channels, hidden), nn.GELU(), nn.Linear(hidden, num_sites))

    @property
    def num_sites(self) -> int:
        return self.classifier[-1].out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Gate-input vector (B, 2 * stem_channels): mean and log-std of each filter."""
        r = self.stem(x).float().flatten(2)
        var, mean = torch.var_mean(r, dim=2)
        return torch.cat([mean, 0.5 * torch.log(var + 1e-6)], dim=1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Site logits (B, S) from gate-input vectors."""
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))
