"""Gated heads, the domain gate and the network variants on both MONAI backbones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_ARCH, tiny_net
from monai.networks.nets import DynUNet, SwinUNETR
from torch import nn

from UHarmonyLib.inference.device import cpu_has_bf16, resolve_precision
from UHarmonyLib.nn.config import NetworkConfig
from UHarmonyLib.nn.gate_network import DETAIL_BINS, FEATURES_PER_CHANNEL, INTENSITY_BINS, DomainGate, scanner_signature
from UHarmonyLib.nn.harmony_layer import HarmonyNorm
from UHarmonyLib.nn.heads import GatedHead
from UHarmonyLib.nn.network import UHarmonyNet
from UHarmonyLib.nn.site_weights import SiteConditioned, one_hot_weights

S = 3


def _head(seed: int = 0) -> GatedHead:
    torch.manual_seed(seed)
    head = GatedHead(6, 4, S)
    with torch.no_grad():
        head.weight.copy_(torch.randn_like(head.weight))
        head.bias.copy_(torch.randn_like(head.bias))
    return head


@pytest.mark.parametrize("site", range(S))
def test_gated_head_one_hot_is_that_sites_conv(site: int) -> None:
    """With one-hot weights the gated head equals that site's own 1x1x1 convolution."""
    head = _head()
    x = torch.randn(2, 6, 5, 4, 3)
    head.site_weights = one_hot_weights(site, S, batch=2)
    expected = F.conv3d(x, head.weight[site].reshape(4, 6, 1, 1, 1), head.bias[site])
    torch.testing.assert_close(head(x), expected, atol=1e-5, rtol=1e-5)


def test_gated_head_soft_weights_mix_logits() -> None:
    """Soft site weights give the per-sample weighted sum of the per-site convolutions."""
    head = _head(1)
    x = torch.randn(2, 6, 5, 4, 3)
    w = torch.softmax(torch.randn(2, S), dim=1)
    per_site = [F.conv3d(x, head.weight[k].reshape(4, 6, 1, 1, 1), head.bias[k]) for k in range(S)]
    head.site_weights = w
    expected = sum(w[:, k].reshape(2, 1, 1, 1, 1) * per_site[k] for k in range(S))
    torch.testing.assert_close(head(x), expected, atol=1e-5, rtol=1e-5)


def test_gated_head_from_conv_starts_every_site_at_the_conv() -> None:
    """A head built from an existing 1x1 convolution reproduces it for every site."""
    torch.manual_seed(2)
    conv = nn.Conv3d(6, 4, kernel_size=1)
    head = GatedHead.from_conv(conv, S)
    x = torch.randn(1, 6, 4, 4, 4)
    for k in range(S):
        head.site_weights = one_hot_weights(k, S)
        torch.testing.assert_close(head(x), conv(x), atol=1e-5, rtol=1e-5)


def test_domain_gate_softmax_sums_to_one() -> None:
    """Softmax of the gate's logits over a batch is a probability vector per sample."""
    torch.manual_seed(0)
    gate = DomainGate(1, 4, hidden=8)
    x = torch.randn(5, 1, 8, 8, 8) * torch.arange(1, 6).reshape(5, 1, 1, 1, 1)
    assert gate.features(x).shape == (5, FEATURES_PER_CHANNEL)
    logits = gate(x)
    assert logits.shape == (5, 4)
    p = torch.softmax(logits, dim=1)
    torch.testing.assert_close(p.sum(1), torch.ones(5))
    assert (p >= 0).all()


def test_scanner_signature_histograms_and_absent_channel() -> None:
    """Each histogram of a channel holds the fraction of its voxels; an absent (all-zero) channel gives zeros."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 24, 24, 24).clamp(-2.9, 4.9)
    x[:, 1] = 0.0
    f = scanner_signature(x)[0]
    first, absent = f[:FEATURES_PER_CHANNEL], f[FEATURES_PER_CHANNEL:]
    n_int = INTENSITY_BINS[0]
    torch.testing.assert_close(first[:n_int].sum(), torch.tensor(1.0))
    assert (first >= 0).all()
    assert torch.count_nonzero(absent) == 0


def test_scanner_signature_sees_noise_and_blur() -> None:
    """More noise moves Laplacian mass to higher bins; blur moves gradient mass to lower bins."""
    torch.manual_seed(0)
    base = torch.nn.functional.avg_pool3d(torch.randn(1, 1, 40, 40, 40), 5, 1, 2) * 5 + 1
    noisy = base + 0.5 * torch.randn_like(base)
    blurred = torch.nn.functional.avg_pool3d(base, 3, 1, 1)
    bins = torch.arange(DETAIL_BINS[0], dtype=torch.float32)
    n_int, n_det = INTENSITY_BINS[0], DETAIL_BINS[0]

    def mean_bin(f: torch.Tensor, start: int) -> float:
        h = f[0, start : start + n_det]
        return float((h * bins).sum() / h.sum())

    lap, grad = n_int, n_int + n_det
    assert mean_bin(scanner_signature(noisy), lap) > mean_bin(scanner_signature(base), lap) + 0.5
    assert mean_bin(scanner_signature(blurred), grad) < mean_bin(scanner_signature(base), grad) - 0.2


def test_gate_scaler_standardizes_features() -> None:
    """After fitting, the gate classifies standardized features (zero mean, unit spread on the fitted set)."""
    torch.manual_seed(0)
    gate = DomainGate(1, 3, hidden=8)
    x = torch.randn(12, 1, 16, 16, 16) * torch.linspace(0.5, 2.0, 12).reshape(12, 1, 1, 1, 1)
    feats = gate.features(x)
    gate.fit_scaler(feats)
    z = (feats - gate.feature_mean) / gate.feature_std
    varying = feats.std(0) > 1e-3
    torch.testing.assert_close(z.mean(0), torch.zeros(feats.shape[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:, varying].std(0), torch.ones(int(varying.sum())), atol=1e-4, rtol=0)


def _harmony(net: nn.Module) -> list[HarmonyNorm]:
    return [m for m in net.modules() if isinstance(m, HarmonyNorm)]


def _count(net: nn.Module, kind: type | tuple[type, ...]) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


@pytest.mark.parametrize("norm", ["uharmony", "instance", "dsbn"])
def test_dynunet_variants_shapes_and_layers(norm: str) -> None:
    """Each DynUNet variant gives (B, out_channels, *patch) logits and (B, S) gate logits, with the right layers."""
    net = tiny_net(0, norm=norm)
    plain = DynUNet(3, 1, 3, [3] * 3, [1, 2, 2], [2, 2], filters=[4, 8, 16], norm_name="INSTANCE", res_block=True)
    n_instance = _count(plain, nn.InstanceNorm3d)
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        seg, gate = net(x)
    assert seg.shape == (2, 3, 16, 16, 16)
    assert gate.shape == (2, S)
    harmony = _harmony(net.backbone)
    assert _count(net.backbone, GatedHead) == 1
    if norm == "instance":
        assert harmony == []
        assert net.harmony_count == 0
        assert _count(net.backbone, nn.InstanceNorm3d) == n_instance
    else:
        assert len(harmony) == n_instance == net.harmony_count
        assert _count(net.backbone, nn.InstanceNorm3d) == 0
        assert {h.layout for h in harmony} == {"channels_first"}
        if norm == "dsbn":
            assert {h.degree for h in harmony} == {1}
        else:  # full-resolution (narrowest) layers use full_res_degree, the rest the full degree
            assert {h.degree for h in harmony if h.num_features == 4} == {net.config.full_res_degree}
            assert {h.degree for h in harmony if h.num_features > 4} == {net.config.degree}
    assert net.config.site_required == (norm == "dsbn")


@pytest.mark.parametrize("norm", ["uharmony", "instance", "dsbn"])
def test_swinunetr_variants_layers(norm: str) -> None:
    """SwinUNETR variants: uharmony/dsbn swap every LayerNorm for a channels_last HarmonyNorm; instance keeps them."""
    torch.manual_seed(0)
    net = UHarmonyNet(NetworkConfig(**{**TINY_ARCH, "backbone": "swinunetr", "norm": norm, "feature_size": 12}))
    plain = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, spatial_dims=3, normalize=False)
    layer_norms = [m.normalized_shape[-1] for m in plain.modules() if isinstance(m, nn.LayerNorm)]
    instance_norms = [m.num_features for m in plain.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert layer_norms and instance_norms
    harmony = _harmony(net.backbone)
    if norm == "instance":
        assert harmony == []
        assert _count(net.backbone, nn.LayerNorm) == len(layer_norms)
    else:
        assert _count(net.backbone, (nn.LayerNorm, nn.InstanceNorm3d)) == 0
        last = [h.num_features for h in harmony if h.layout == "channels_last"]
        first = [h.num_features for h in harmony if h.layout == "channels_first"]
        assert last == layer_norms
        assert first == instance_norms
    assert _count(net.backbone, GatedHead) == 1


@pytest.mark.parametrize("norm", ["uharmony", "instance"])
def test_swinunetr_forward_shapes(norm: str) -> None:
    """A SwinUNETR network segments a 64^3 patch into (B, out_channels, *patch) with (B, S) gate logits."""
    # 64 is the smallest patch MONAI's SwinUNETR runs on: at 32 its bottleneck instance norm sees a single voxel.
    # The U-Harmony variant is driven by its gate, the instance baseline by a named site.
    torch.manual_seed(0)
    net = UHarmonyNet(NetworkConfig(**{**TINY_ARCH, "backbone": "swinunetr", "norm": norm, "feature_size": 12}))
    net.eval()
    weights = one_hot_weights(2, S) if norm == "instance" else None
    with torch.no_grad():
        seg, gate = net(torch.randn(1, 1, 64, 64, 64), weights)
    assert seg.shape == (1, 3, 64, 64, 64)
    assert gate.shape == (1, S)
    assert torch.isfinite(seg).all()


def test_forward_uses_gate_softmax_and_clears_site_weights() -> None:
    """Without site weights the network uses the gate's softmax; site weights are cleared after every pass."""
    net = tiny_net(0)
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        seg, gate = net(x)
        expected = net.segment(x, torch.softmax(gate, dim=1))
        one_hot = net.segment(x, one_hot_weights(0, S, batch=2))
    torch.testing.assert_close(seg, expected)
    assert not torch.allclose(seg, one_hot, atol=1e-4)  # the site weights change the result
    assert all(m.site_weights is None for m in net.modules() if isinstance(m, SiteConditioned))


def test_network_config_checks_and_round_trip() -> None:
    """NetworkConfig refuses unknown backbones/norms and survives to_dict/from_dict."""
    cfg = NetworkConfig(**TINY_ARCH)
    assert NetworkConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown backbone 'vnet'"):
        NetworkConfig(**{**TINY_ARCH, "backbone": "vnet"})
    with pytest.raises(ValueError, match="unknown norm"):
        NetworkConfig(**{**TINY_ARCH, "norm": "batch"})
    with pytest.raises(ValueError, match="unknown architecture keys: depth"):
        NetworkConfig.from_dict({**cfg.to_dict(), "depth": 4})


def test_config_without_full_res_degree_keeps_one_degree_everywhere() -> None:
    """A card from before `full_res_degree` existed rebuilds the network it was saved from (degree everywhere)."""
    old = {
        k: v
        for k, v in NetworkConfig(in_channels=1, out_channels=3, num_sites=2).to_dict().items()
        if k != "full_res_degree"
    }
    assert NetworkConfig.from_dict(old).full_res_degree == old["degree"]


def test_auto_precision_keeps_swinunetr_in_float32_on_cpus() -> None:
    """bfloat16 autocast runs SwinUNETR's norms in bfloat16 (NaN weights within steps) and is slower there."""
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, "swinunetr") == torch.float32
    assert resolve_precision("auto", cpu, "dynunet") == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    assert resolve_precision("bfloat16", cpu, "swinunetr") == torch.bfloat16  # an explicit choice is kept
