"""Growing a trained network by one site (and optionally new label classes), old sites intact.

Every site-indexed parameter (harmony coefficients, gated-head convolutions, the gate's
output row) gets one more row, initialized as the gate-weighted mix of the known sites'
rows: the new site starts as the model's own best guess for its images. New label
classes get head rows that old sites can never pick (zero weights and a bias far below
any logit, so their softmax and argmax stay bit-identical) and, for the new site, a
start from the mix of the existing lesion classes.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from UHarmonyLib.nn.heads import GatedHead
from UHarmonyLib.nn.network import UHarmonyNet
from UHarmonyLib.nn.site_weights import SiteConditioned

ABSENT_CLASS_BIAS = -100.0  # exp(-100) vanishes next to any real class in float32: old sites' outputs do not move


def site_parameters(net: UHarmonyNet) -> list[torch.nn.Parameter]:
    """Parameters whose first axis is the site (harmony layers and gated heads)."""
    return [
        p
        for m in net.backbone.modules()
        if isinstance(m, SiteConditioned)
        for p in m.parameters(recurse=False)
        if p.shape[0] == m.num_sites
    ]


@torch.no_grad()
def grow(parent: UHarmonyNet, mix: torch.Tensor, new_labels: int = 0) -> UHarmonyNet:
    """A copy of `parent` with one more site (rows = `mix`-weighted old rows) and `new_labels` more classes."""
    cfg = parent.config
    child = UHarmonyNet(replace(cfg, num_sites=cfg.num_sites + 1, out_channels=cfg.out_channels + new_labels))
    old_modules = dict(parent.named_modules())
    mix = mix.double()
    for name, module in child.named_modules():
        if not isinstance(module, SiteConditioned):
            continue
        old = old_modules[name]
        for pname, p in module.named_parameters(recurse=False):
            q = getattr(old, pname).detach()
            grown = torch.cat([q, torch.einsum("s,s...->...", mix, q.double()).to(q.dtype)[None]])
            if isinstance(module, GatedHead) and new_labels:
                grown = _add_classes(grown, pname, new_labels)
            p.copy_(grown)
    parent_state = parent.state_dict()
    for key, value in child.state_dict().items():
        if key.startswith("backbone.") and value.shape == parent_state[key].shape:
            value.copy_(parent_state[key])
    child.gate.feature_mean.copy_(parent.gate.feature_mean)
    child.gate.feature_std.copy_(parent.gate.feature_std)
    old_first, new_first = parent.gate.input_layer, child.gate.input_layer
    new_first.weight.copy_(old_first.weight)
    new_first.bias.copy_(old_first.bias)
    old_last, new_last = parent.gate.output_layer, child.gate.output_layer
    new_last.weight.copy_(torch.cat([old_last.weight, (mix.float() @ old_last.weight)[None]]))
    new_last.bias.copy_(torch.cat([old_last.bias, (mix.float() @ old_last.bias)[None]]))
    return child


def _add_classes(rows: torch.Tensor, pname: str, count: int) -> torch.Tensor:
    """Head rows (S+1, K, ...) -> (S+1, K+count, ...): dead for old sites, lesion-like for the new one."""
    lesion = rows[-1, 1:].mean(0, keepdim=True)  # the new site's mean lesion class
    extra = torch.zeros(rows.shape[0], count, *rows.shape[2:], dtype=rows.dtype)
    if pname == "bias":
        extra[:-1] = ABSENT_CLASS_BIAS
    extra[-1] = lesion.expand(count, *rows.shape[2:])
    return torch.cat([rows, extra], dim=1)
