"""The U-Harmony normalization layer: standardize, then restore with site parameters.

Stage 1 removes each sample's own feature statistics (instance-wise, no affine), so
features from different scanners meet on one scale. Stage 2 restores them with a
site-specific polynomial of the standardized value, mixed by site weights:

    y = sum_s w_s * (a[s,1] * x + sum_{k>=2} a[s,k] * t**k + b[s]),   t = clamp(x, -c, c)

The linear term acts on the unclamped value so that, at initialization (a[s,1] = 1, all
else 0), the layer is exactly a parameter-free instance/layer norm. Higher powers act on
a clamped value so a rare outlier (|x| of 10 or more) cannot blow up the output or its
gradient: this is the numerically safe form of the polynomial affine map.
Because the map is linear in its coefficients, mixing coefficients equals mixing the
per-site outputs, at the cost of one site's evaluation.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from UHarmonyLib.nn.site_weights import SiteConditioned

Layout = Literal["channels_first", "channels_last"]


class HarmonyNorm(SiteConditioned):
    """Harmony layer for conv maps (B, C, *spatial) or tokens (B, *tokens, C)."""

    def __init__(
        self,
        num_features: int,
        num_sites: int,
        degree: int = 3,
        layout: Layout = "channels_first",
        eps: float = 1e-5,
        clip: float = 4.0,
    ) -> None:
        super().__init__(num_sites)
        if degree < 1:
            raise ValueError("degree must be at least 1")
        self.num_features = num_features
        self.degree = degree
        self.layout = layout
        self.eps = eps
        self.clip = clip
        coef = torch.zeros(num_sites, degree, num_features)
        coef[:, 0, :] = 1.0
        self.coef = torch.nn.Parameter(coef)
        self.bias = torch.nn.Parameter(torch.zeros(num_sites, num_features))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Stage 1: zero mean, unit variance per sample and channel (or per token)."""
        if self.layout == "channels_first":
            return F.instance_norm(x, eps=self.eps)
        return F.layer_norm(x, (self.num_features,), eps=self.eps)

    def _shape(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Broadcast a (B, C) parameter over x's non-channel axes."""
        if self.layout == "channels_first":
            return p.reshape(p.shape[0], p.shape[1], *([1] * (x.dim() - 2)))
        return p.reshape(p.shape[0], *([1] * (x.dim() - 2)), p.shape[1])

    def _standardize_linear(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """Stage 1 and the degree-1 part of stage 2 in one fused normalization kernel.

        All samples share one affine map at inference (one case-level weight vector), so the
        framework's own affine normalization applies (decided by the weights: rows that merely
        hold equal values, as every site's does at initialization, still need each sample's
        gradient); per-sample maps in a conv layer use the instance-norm identity that (B, C)
        instances are (1, B*C) instances.
        """
        w = self.site_weights  # shared weights, not equal-valued rows: those would train only the first sample's row
        shared = w is None or bool((w == w[:1]).all())
        if self.layout == "channels_last":
            if shared:
                return F.layer_norm(x, (self.num_features,), scale[0], shift[0], self.eps)
            return torch.addcmul(
                self._shape(shift, x), F.layer_norm(x, (self.num_features,), eps=self.eps), self._shape(scale, x)
            )
        if shared:
            return F.instance_norm(x, weight=scale[0], bias=shift[0], eps=self.eps)
        flat = x.reshape(1, -1, *x.shape[2:])
        return F.instance_norm(flat, weight=scale.reshape(-1), bias=shift.reshape(-1), eps=self.eps).reshape(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        coef = self.mix(self.coef, batch).to(x.dtype)  # (B, K, C)
        bias = self.mix(self.bias, batch).to(x.dtype)  # (B, C)
        if self.degree == 1:
            return self._standardize_linear(x, coef[:, 0], bias)
        x_hat = self.standardize(x)
        y = torch.addcmul(self._shape(bias, x), x_hat, self._shape(coef[:, 0], x))
        t = x_hat.clamp(-self.clip, self.clip)
        acc = self._shape(coef[:, -1], x)
        for k in range(self.degree - 2, 0, -1):
            acc = torch.addcmul(self._shape(coef[:, k], x), acc, t)
        return torch.addcmul(y, acc * t, t)

    def extra_repr(self) -> str:
        return f"{self.num_features}, sites={self.num_sites}, degree={self.degree}, layout={self.layout}"
