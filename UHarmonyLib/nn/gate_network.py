"""Domain gate: recognizes an image's site from a cheap scanner signature of each patch.

The signature is a set of normalized histograms per channel, over the patch's
non-background voxels (on a stride-2 subsample, so a 96^3 window costs milliseconds):
intensity (contrast table and gamma), log |Laplacian| (noise) and log gradient
magnitude (blur, resolution). These summary statistics are what distinguishes scanners
after intensity normalization; they contain no image, so a bank of them per site can
stand in for old sites' images when a new site is added. A fixed standardization
(fitted once on training patches and stored in the bundle) puts every feature on one
scale for the small classifier on top.
"""

from __future__ import annotations

import torch
from torch import nn

INTENSITY_BINS = (16, -3.0, 5.0)
DETAIL_BINS = (8, -5.0, 2.0)
FEATURES_PER_CHANNEL = INTENSITY_BINS[0] + 2 * DETAIL_BINS[0]


def _channel_signature(v: torch.Tensor) -> torch.Tensor:
    """Histograms of one 3-D channel; all zeros for an empty (absent) channel."""
    v = v[::2, ::2, ::2].float()
    c = v[1:-1, 1:-1, 1:-1]
    fg = c != 0
    n = fg.sum().clamp(min=1)
    lap = 6 * c - v[:-2, 1:-1, 1:-1] - v[2:, 1:-1, 1:-1] - v[1:-1, :-2, 1:-1]
    lap = lap - v[1:-1, 2:, 1:-1] - v[1:-1, 1:-1, :-2] - v[1:-1, 1:-1, 2:]
    grad = (v[2:, 1:-1, 1:-1] - c).abs() + (v[1:-1, 2:, 1:-1] - c).abs() + (v[1:-1, 1:-1, 2:] - c).abs()
    return (
        torch.cat(
            [
                torch.histc(c[fg], *INTENSITY_BINS),
                torch.histc(torch.log(lap[fg].abs() + 1e-3), *DETAIL_BINS),
                torch.histc(torch.log(grad[fg] + 1e-3), *DETAIL_BINS),
            ]
        )
        / n
    )


def scanner_signature(x: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) patches -> (B, C * FEATURES_PER_CHANNEL) gate-input vectors."""
    with torch.no_grad():
        return torch.stack([torch.cat([_channel_signature(ch) for ch in sample]) for sample in x])


class DomainGate(nn.Module):
    """Site logits from standardized scanner signatures."""

    feature_mean: torch.Tensor  # buffers, registered in __init__
    feature_std: torch.Tensor
    classifier: nn.Sequential

    def __init__(self, in_channels: int, num_sites: int, hidden: int = 64) -> None:
        super().__init__()
        width = in_channels * FEATURES_PER_CHANNEL
        self.register_buffer("feature_mean", torch.zeros(width))
        self.register_buffer("feature_std", torch.ones(width))
        self.classifier = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, num_sites))

    def _linear(self, index: int) -> nn.Linear:
        layer = self.classifier[index]
        assert isinstance(layer, nn.Linear)
        return layer

    @property
    def input_layer(self) -> nn.Linear:
        """The classifier's first layer: standardized signature features -> hidden."""
        return self._linear(0)

    @property
    def output_layer(self) -> nn.Linear:
        """The classifier's last layer: hidden -> one logit per site."""
        return self._linear(-1)

    @property
    def num_sites(self) -> int:
        return self.output_layer.out_features

    def fit_scaler(self, features: torch.Tensor) -> None:
        """Standardize features with statistics of training patches (done once, before training)."""
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp(min=1e-3))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return scanner_signature(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Site logits (B, S) from gate-input vectors."""
        z = (features.float() - self.feature_mean) / self.feature_std
        return self.classifier(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))
