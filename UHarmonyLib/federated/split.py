"""Which tensors may leave a site.

Shared: every backbone tensor that is the same for all sites (convolutions, and for
plain FedAvg the InstanceNorm affines too). Site-local: the rows of site-indexed tensors
(harmony columns or FedBN-style affines, gated heads) and the whole gate, which is never
averaged: each site refits it from the gate bank's summary vectors. With residual site
parameters a site-indexed tensor is a shared value (sent and averaged) plus per-site
offsets (the site-local rows). A site sends only `shared_state`; its own rows go to
`site_rows` and stay on its disk.
"""

from __future__ import annotations

import torch
from torch.nn.utils import parametrize

from UHarmonyLib.model.weights import unique_state
from UHarmonyLib.nn.network import UHarmonyNet
from UHarmonyLib.nn.site_weights import SiteConditioned

GATE_PREFIX = "gate."


def site_tensor_names(net: UHarmonyNet) -> list[str]:
    """State names whose first axis is the site (one row per site): plain rows, or residual rows' offsets."""
    names = []
    for mod_name, m in net.named_modules():
        if isinstance(m, SiteConditioned):
            for p_name, p in m.named_parameters(recurse=False):
                if p.shape[0] == m.num_sites:
                    names.append(f"{mod_name}.{p_name}")
            if parametrize.is_parametrized(m):  # shared + offset: the stored tensor holds the offsets
                assert isinstance(m.parametrizations, torch.nn.ModuleDict)
                names += [f"{mod_name}.parametrizations.{p_name}.original" for p_name in m.parametrizations]
    return names


def shared_names(net: UHarmonyNet) -> list[str]:
    """The tensors a site may send: all but site rows and the gate."""
    local = set(site_tensor_names(net))
    return [k for k in unique_state(net) if k not in local and not k.startswith(GATE_PREFIX)]


def shared_state(net: UHarmonyNet) -> dict[str, torch.Tensor]:
    state = unique_state(net)
    return {k: state[k].detach().cpu().clone() for k in shared_names(net)}


def load_shared(net: UHarmonyNet, arrays: dict[str, torch.Tensor]) -> None:
    """Copy received shared tensors in; anything else (a site row, the gate, a stranger) is refused."""
    expected = set(shared_names(net))
    if set(arrays) != expected:
        extra = sorted(set(arrays) - expected)[:3]
        missing = sorted(expected - set(arrays))[:3]
        raise ValueError(f"shared tensors do not fit this network (unexpected {extra}, missing {missing})")
    state = unique_state(net)
    with torch.no_grad():
        for k, v in arrays.items():
            state[k].copy_(v.to(state[k].dtype))


def site_rows(net: UHarmonyNet, site: int) -> dict[str, torch.Tensor]:
    """One site's rows of every site-indexed tensor."""
    state = unique_state(net)
    return {k: state[k][site].detach().cpu().clone() for k in site_tensor_names(net)}


def load_site_rows(net: UHarmonyNet, site: int, rows: dict[str, torch.Tensor]) -> None:
    state = unique_state(net)
    if set(rows) != set(site_tensor_names(net)):
        raise ValueError("saved site rows do not fit this network")
    with torch.no_grad():
        for k, v in rows.items():
            state[k][site].copy_(v)
