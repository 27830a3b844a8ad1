"""Residual site parameters: shared + offset while training, plain per-site rows in the bundle.

Real UHarmonyNet (tiny DynUNet), real AdamW steps; the claims are that the
reparametrization computes the same function, that one site's batches now move every
site's rows (through the shared part), and that folding gives back exactly the network
that was trained, under the state names a bundle stores.
"""

from __future__ import annotations

import pytest
import torch

from UHarmonyLib.model.weights import unique_state
from UHarmonyLib.nn.config import NetworkConfig
from UHarmonyLib.nn.network import UHarmonyNet
from UHarmonyLib.nn.site_weights import one_hot_weights
from UHarmonyLib.training.site_sharing import fold_site_rows, share_site_rows

SITES = 3


def _net(seed: int = 0) -> UHarmonyNet:
    torch.manual_seed(seed)
    return UHarmonyNet(NetworkConfig(in_channels=2, out_channels=3, num_sites=SITES, filters=(4, 8, 16)))


def _rows(net: UHarmonyNet) -> dict[str, torch.Tensor]:
    """Every site-indexed parameter as the layers see it (shared + offset when shared)."""
    return {
        f"{name}.{p}": getattr(m, p).detach().clone()
        for name, m in net.backbone.named_modules()
        for p in ("coef", "bias", "weight")
        if hasattr(m, "num_sites") and isinstance(getattr(m, p, None), torch.Tensor)
    }


def _step(net: UHarmonyNet, site: int, x: torch.Tensor) -> None:
    """One AdamW step (no weight decay) on a batch of one site only."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.0)
    net.segment(x, one_hot_weights(site, SITES, x.shape[0])).square().mean().backward()
    opt.step()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 2, 16, 16, 16, generator=torch.Generator().manual_seed(1))


def test_sharing_computes_the_same_function(x: torch.Tensor) -> None:
    net = _net()
    w = torch.softmax(torch.randn(2, SITES, generator=torch.Generator().manual_seed(2)), dim=1)
    with torch.no_grad():
        before = net.segment(x, w)
        assert share_site_rows(net) == len(_rows(net)) > 0
        after = net.segment(x, w)
    # every site starts from the same rows, so shared = that row and the offsets are exactly zero
    assert torch.equal(before, after)


def test_one_sites_batch_moves_every_sites_rows_only_when_shared(x: torch.Tensor) -> None:
    independent, shared = _net(), _net()
    share_site_rows(shared)
    start = _rows(independent)
    _step(independent, 0, x)
    _step(shared, 0, x)
    moved_alone = {k: not torch.equal(v[1], start[k][1]) for k, v in _rows(independent).items()}
    moved_shared = {k: not torch.equal(v[1], start[k][1]) for k, v in _rows(shared).items()}
    assert not any(moved_alone.values()), "independent rows of site 1 moved on a site-0 batch"
    assert all(moved_shared.values()), [k for k, v in moved_shared.items() if not v]
    # the site that was trained still moves further than the ones that were not
    diff = {k: (v[0] - v[1]).abs().max().item() for k, v in _rows(shared).items()}
    assert max(diff.values()) > 0


def test_folding_gives_back_the_trained_network_under_bundle_names(x: torch.Tensor) -> None:
    net = _net()
    names = set(unique_state(_net()))
    share_site_rows(net)
    assert any("parametrizations" in k for k in unique_state(net))
    for site in (0, 2, 1):
        _step(net, site, x)
    w = torch.softmax(torch.randn(2, SITES, generator=torch.Generator().manual_seed(3)), dim=1)
    with torch.no_grad():
        trained = net.segment(x, w)
        fold_site_rows(net)
        folded = net.segment(x, w)
    assert set(unique_state(net)) == names
    assert torch.allclose(trained, folded, atol=1e-6, rtol=0)
    plain = _net()
    plain.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(plain.segment(x, w), folded)
