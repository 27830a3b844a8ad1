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

Cost: the mixed coefficients are small (sample, channel) tensors, mixed once per call (one
row when the batch shares its site weights) and kept in float32; every pass over a feature
map is one vectorized kernel in the map's own precision (see `channel_affine`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from UHarmonyLib.nn.site_weights import SiteConditioned

Layout = Literal["channels_first", "channels_last"]


def channel_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """scale * x + shift per (sample, channel) of a conv map (B, C, *spatial), in one vectorized pass.

    scale and shift are (B, C), or (1, C) when the batch shares them, in any float precision; the
    result has x's. torch.addcmul with two per-channel operands falls off the vectorized elementwise
    loop (about 8x slower on a bfloat16 map on CPU); batch normalization in eval mode with mean 0,
    variance 1 and eps 0 is exactly this map (its inverse std is 1) in the framework's per-channel
    kernel, computed in float32 and differentiable in all three arguments. (B, C) instances are
    (1, B*C) instances, so per-sample maps stay one kernel.
    """
    if scale.shape[0] == 1:
        maps, scale, shift = x, scale[0], shift[0]
    else:
        maps, scale, shift = x.reshape(1, -1, *x.shape[2:]), scale.reshape(-1), shift.reshape(-1)
    zero, one = torch.zeros_like(scale), torch.ones_like(scale)
    return F.batch_norm(maps, zero, one, scale, shift, training=False, eps=0.0).reshape(x.shape)


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
        """Broadcast a (B, C) or (1, C) parameter over x's non-channel axes, in x's precision.

        A float32 operand would make an elementwise op write a float32 copy of a bfloat16 map.
        """
        p = p.to(x.dtype)
        if self.layout == "channels_first":
            return p.reshape(p.shape[0], p.shape[1], *([1] * (x.dim() - 2)))
        return p.reshape(p.shape[0], *([1] * (x.dim() - 2)), p.shape[1])

    def _affine(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """scale * x + shift per (sample, channel); tokens have the channel axis innermost, where addcmul vectorizes."""
        if self.layout == "channels_first":
            return channel_affine(x, scale, shift)
        return torch.addcmul(self._shape(shift, x), x, self._shape(scale, x))

    def _standardize_linear(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """Stage 1 and the degree-1 part of stage 2 in one fused normalization kernel.

        Parameters shared by the batch ((1, C): one case-level weight vector, as at inference) are the
        framework's own affine normalization; per-sample maps in a conv layer use the instance-norm
        identity that (B, C) instances are (1, B*C) instances.
        """
        if self.layout == "channels_last":
            if scale.shape[0] == 1:
                return F.layer_norm(x, (self.num_features,), scale[0].to(x.dtype), shift[0].to(x.dtype), self.eps)
            return self._affine(self.standardize(x), scale, shift)
        if scale.shape[0] == 1:
            return F.instance_norm(x, weight=scale[0], bias=shift[0], eps=self.eps)
        flat = x.reshape(1, -1, *x.shape[2:])
        return F.instance_norm(flat, weight=scale.reshape(-1), bias=shift.reshape(-1), eps=self.eps).reshape(x.shape)

    def _powers(self, t: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """sum_{k=2..K} a_k t**(k-1) by Horner's rule (times t once more, the higher-degree part of stage 2)."""
        if self.degree == 2:
            return t * self._shape(coef[:, 1], t)
        acc = self._affine(t, coef[:, -1], coef[:, -2])  # a_K t + a_(K-1)
        for k in range(self.degree - 3, 0, -1):
            acc = torch.addcmul(self._shape(coef[:, k], t), acc, t)
        return acc * t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.batch_shares_weights()
        coef = self.mix(self.coef, x.shape[0], shared)  # (R, K, C), R = 1 when shared, else B
        bias = self.mix(self.bias, x.shape[0], shared)  # (R, C)
        if self.degree == 1:
            return self._standardize_linear(x, coef[:, 0], bias)
        x_hat = self.standardize(x)
        t = x_hat.clamp(-self.clip, self.clip)
        return torch.addcmul(self._affine(x_hat, coef[:, 0], bias), self._powers(t, coef), t)

    def extra_repr(self) -> str:
        return f"{self.num_features}, sites={self.num_sites}, degree={self.degree}, layout={self.layout}"
