"""Site-gated output head: one 1x1 convolution per site over the union label space."""

from __future__ import annotations

import torch
from torch import nn

from UHarmonyLib.nn.site_weights import SiteConditioned


class GatedHead(SiteConditioned):
    """Per-site 1x1 convolutions, mixed by site weights (mixing weights = mixing logits)."""

    def __init__(self, in_channels: int, out_channels: int, num_sites: int) -> None:
        super().__init__(num_sites)
        self.weight = nn.Parameter(torch.empty(num_sites, out_channels, in_channels))
        self.bias = nn.Parameter(torch.zeros(num_sites, out_channels))
        nn.init.kaiming_uniform_(self.weight[0], a=5**0.5)
        with torch.no_grad():
            self.weight[1:] = self.weight[0]

    @classmethod
    def from_conv(cls, conv: nn.Conv3d | nn.Conv2d, num_sites: int) -> GatedHead:
        """Start every site from an existing 1x1 convolution (the backbone's own head)."""
        head = cls(conv.in_channels, conv.out_channels, num_sites)
        with torch.no_grad():
            head.weight.copy_(conv.weight.reshape(1, conv.out_channels, conv.in_channels).expand_as(head.weight))
            if conv.bias is not None:
                head.bias.copy_(conv.bias.reshape(1, -1).expand_as(head.bias))
        return head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        weight = self.mix(self.weight, batch).to(x.dtype)  # (B, out, in)
        bias = self.mix(self.bias, batch).to(x.dtype)  # (B, out)
        y = torch.bmm(weight, x.flatten(2)) + bias.unsqueeze(-1)
        return y.reshape(batch, weight.shape[1], *x.shape[2:])
