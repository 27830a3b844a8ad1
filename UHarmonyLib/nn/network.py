"""One constructor for U-Harmony and its baselines on MONAI backbones.

MONAI's DynUNet and SwinUNETR are built unchanged, then their normalization layers and
output convolution are swapped on the built model (module surgery), so no MONAI code is
copied and any MONAI release with the same module layout works.
"""

from __future__ import annotations

import torch
from monai.networks.nets import DynUNet, SwinUNETR
from torch import nn

from UHarmonyLib.nn.config import NetworkConfig
from UHarmonyLib.nn.gate_network import DomainGate
from UHarmonyLib.nn.harmony_layer import HarmonyNorm, Layout
from UHarmonyLib.nn.heads import GatedHead
from UHarmonyLib.nn.site_weights import SiteConditioned


def _build_backbone(cfg: NetworkConfig) -> nn.Module:
    if cfg.backbone == "dynunet":
        depth = len(cfg.filters)
        return DynUNet(
            spatial_dims=cfg.spatial_dims,
            in_channels=cfg.in_channels,
            out_channels=cfg.out_channels,
            kernel_size=[3] * depth,
            strides=[1] + [2] * (depth - 1),
            upsample_kernel_size=[2] * (depth - 1),
            filters=list(cfg.filters),
            norm_name=("INSTANCE", {"affine": True}),
            deep_supervision=False,
            res_block=True,
        )
    return SwinUNETR(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        feature_size=cfg.feature_size,
        spatial_dims=cfg.spatial_dims,
        normalize=False,  # its proj_out layer norm is functional and cannot be swapped
    )


_Norm = nn.InstanceNorm3d | nn.InstanceNorm2d | nn.LayerNorm
_Conv = nn.Conv3d | nn.Conv2d


def _norm_layers(module: nn.Module) -> list[tuple[nn.Module, str, _Norm]]:
    """(parent, attribute, layer) for every InstanceNorm/LayerNorm, in registration order."""
    found: list[tuple[nn.Module, str, _Norm]] = []
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, (nn.InstanceNorm3d, nn.InstanceNorm2d, nn.LayerNorm)):
                found.append((parent, name, child))
    return found


def _swap_norms(backbone: nn.Module, cfg: NetworkConfig) -> int:
    """Replace the first `harmony_layers` normalization layers (all if negative)."""
    layers = _norm_layers(backbone)
    limit = len(layers) if cfg.harmony_layers < 0 else cfg.harmony_layers
    widths = [old.normalized_shape[-1] if isinstance(old, nn.LayerNorm) else old.num_features for _, _, old in layers]
    full_res = min(widths)  # the narrowest maps are the full-resolution ones in both backbones
    for (parent, name, old), width in zip(layers[:limit], widths):
        degree = 1 if cfg.norm == "dsbn" else (cfg.full_res_degree if width == full_res else cfg.degree)
        layout: Layout = "channels_last" if isinstance(old, nn.LayerNorm) else "channels_first"
        setattr(parent, name, HarmonyNorm(width, cfg.num_sites, degree, layout, old.eps))
    return min(limit, len(layers))


def _output_conv_owner(backbone: nn.Module) -> tuple[nn.Module, str, _Conv]:
    """The 1x1 output convolution of the backbone, with its parent and attribute name."""
    block = backbone.output_block if isinstance(backbone, DynUNet) else backbone.out
    assert isinstance(block, nn.Module)
    for parent in block.modules():
        for name, child in parent.named_children():
            if isinstance(child, (nn.Conv3d, nn.Conv2d)):
                return parent, name, child
    raise RuntimeError("backbone has no output convolution")


class UHarmonyNet(nn.Module):
    """Backbone with harmony layers, a domain gate and (optionally) site-gated heads."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.config = cfg
        self.backbone = _build_backbone(cfg)
        self.harmony_count = _swap_norms(self.backbone, cfg) if cfg.norm != "instance" else 0
        if cfg.gated_heads:
            parent, name, conv = _output_conv_owner(self.backbone)
            setattr(parent, name, GatedHead.from_conv(conv, cfg.num_sites))
        self.gate = DomainGate(cfg.in_channels, cfg.num_sites, cfg.gate_hidden)
        self._conditioned = [m for m in self.backbone.modules() if isinstance(m, SiteConditioned)]

    def segment(self, x: torch.Tensor, site_weights: torch.Tensor) -> torch.Tensor:
        """Segmentation logits with the given site weights (B, S)."""
        for m in self._conditioned:
            m.site_weights = site_weights
        try:
            return self.backbone(x)
        finally:
            for m in self._conditioned:
                m.site_weights = None

    def forward(self, x: torch.Tensor, site_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(segmentation logits, gate logits); the gate's softmax drives the layers when no site is given."""
        gate_logits = self.gate(x)
        if site_weights is None:
            site_weights = torch.softmax(gate_logits.float(), dim=1)
        return self.segment(x, site_weights), gate_logits
