"""Training-time form of the site-indexed parameters: one shared value plus a per-site offset.

Each site's harmony coefficients and head weights are seen only by that site's patches,
so with independent rows every site relearns, from a quarter of the data, what all
sites have in common. Writing row s as `shared + offset[s]` lets the common part learn
from every batch while the offsets (starting at zero, shrunk by weight decay) keep what
is site-specific. The function class is unchanged: site weights sum to one, so
`sum_s w_s (shared + offset[s]) = shared + sum_s w_s offset[s]`, and folding the two
back into plain rows before the bundle is written leaves inference, add-site, the gate
bank and federated training exactly as they are.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from UHarmonyLib.nn.network import UHarmonyNet
from UHarmonyLib.nn.site_weights import SiteConditioned

SITE_PARAMS = ("residual", "independent")


class SharedPlusOffset(nn.Module):
    """rows = shared + offset; the offsets are the parametrization's stored tensor."""

    def __init__(self, rows: torch.Tensor) -> None:
        super().__init__()
        self.shared = nn.Parameter(rows.detach().mean(0).clone())

    def forward(self, offset: torch.Tensor) -> torch.Tensor:
        return self.shared + offset

    def right_inverse(self, rows: torch.Tensor) -> torch.Tensor:
        return rows - self.shared


def _site_rows(net: UHarmonyNet) -> list[tuple[SiteConditioned, str]]:
    """(layer, parameter name) of every parameter with one row per site."""
    return [
        (m, name)
        for m in net.backbone.modules()
        if isinstance(m, SiteConditioned)
        for name, p in m.named_parameters(recurse=False)
        if p.shape[0] == m.num_sites
    ]


def share_site_rows(net: UHarmonyNet) -> int:
    """Reparametrize every site-indexed parameter as shared + offset (before the optimizer is built)."""
    found = _site_rows(net)
    for module, name in found:
        parametrize.register_parametrization(module, name, SharedPlusOffset(getattr(module, name)))
    return len(found)


def fold_site_rows(net: UHarmonyNet) -> None:
    """Back to plain per-site rows holding shared + offset (what bundles store)."""
    for module in net.backbone.modules():
        if parametrize.is_parametrized(module):
            assert isinstance(module.parametrizations, nn.ModuleDict)
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
