"""HarmonyNorm: stage-1 standardization, identity at initialization, site mixing, clamping, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from UHarmonyLib.nn.harmony_layer import HarmonyNorm, channel_affine
from UHarmonyLib.nn.site_weights import one_hot_weights

C = 5
S = 3


def _randomized(layer: HarmonyNorm, seed: int = 1) -> HarmonyNorm:
    """Give every site its own polynomial coefficients and bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.coef.copy_(torch.randn(layer.coef.shape, generator=g))
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g))
    return layer


def _input(layout: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    # non-zero mean, non-unit scale, different per sample and channel
    x = torch.randn(shape) * 3.0 + 7.0
    if layout == "channels_first":
        x = x * torch.arange(1, shape[1] + 1).reshape(1, shape[1], *([1] * (len(shape) - 2)))
    return x


LAYOUT_SHAPES = [
    ("channels_first", (2, C, 6, 5, 4)),
    ("channels_last", (2, 11, C)),
    ("channels_last", (2, 4, 3, 5, C)),
]


@pytest.mark.parametrize(("layout", "shape"), LAYOUT_SHAPES)
def test_stage1_zero_mean_unit_variance(layout: str, shape: tuple[int, ...]) -> None:
    """Stage 1 gives zero mean and unit variance per sample/channel (conv) or per token (channels_last)."""
    layer = HarmonyNorm(C, S, layout=layout)  # type: ignore[arg-type]
    y = layer.standardize(_input(layout, shape))
    if layout == "channels_first":
        flat = y.flatten(2)  # (B, C, voxels): statistics over space, per sample and channel
        mean, var = flat.mean(2), flat.var(2, unbiased=False)
        assert mean.shape == (shape[0], C)
    else:
        mean, var = y.mean(-1), y.var(-1, unbiased=False)  # per token, over channels
        assert mean.shape == shape[:-1]
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
    torch.testing.assert_close(var, torch.ones_like(var), atol=1e-3, rtol=0)


@pytest.mark.parametrize(("layout", "shape"), LAYOUT_SHAPES)
def test_identity_at_initialization(layout: str, shape: tuple[int, ...]) -> None:
    """A fresh layer, whatever the site weights, is exactly a parameter-free instance/layer norm."""
    layer = HarmonyNorm(C, S, layout=layout)  # type: ignore[arg-type]
    x = _input(layout, shape)
    layer.site_weights = torch.softmax(torch.randn(shape[0], S), dim=1)
    expected = F.instance_norm(x, eps=layer.eps) if layout == "channels_first" else F.layer_norm(x, (C,), eps=layer.eps)
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("layout", "shape"), LAYOUT_SHAPES)
@pytest.mark.parametrize("site", range(S))
def test_one_hot_equals_single_site_layer(layout: str, shape: tuple[int, ...], site: int) -> None:
    """One-hot site weights give the output of a 1-site layer holding that site's coefficients."""
    layer = _randomized(HarmonyNorm(C, S, layout=layout))  # type: ignore[arg-type]
    single = HarmonyNorm(C, 1, layout=layout)  # type: ignore[arg-type]
    with torch.no_grad():
        single.coef.copy_(layer.coef[site : site + 1])
        single.bias.copy_(layer.bias[site : site + 1])
    x = _input(layout, shape)
    layer.site_weights = one_hot_weights(site, S, batch=shape[0])
    others = [k for k in range(S) if k != site]
    out = layer(x)
    torch.testing.assert_close(out, single(x), atol=1e-5, rtol=1e-5)
    # and the result really depends on the site chosen
    layer.site_weights = one_hot_weights(others[0], S, batch=shape[0])
    assert not torch.allclose(layer(x), out, atol=1e-3)


@pytest.mark.parametrize(("layout", "shape"), LAYOUT_SHAPES)
def test_soft_weights_mix_per_site_outputs(layout: str, shape: tuple[int, ...]) -> None:
    """Soft site weights give the weighted sum of the per-site outputs (the map is linear in its parameters)."""
    layer = _randomized(HarmonyNorm(C, S, layout=layout))  # type: ignore[arg-type]
    x = _input(layout, shape)
    torch.manual_seed(3)
    w = torch.softmax(2.0 * torch.randn(shape[0], S), dim=1)
    per_site = []
    for k in range(S):
        layer.site_weights = one_hot_weights(k, S, batch=shape[0])
        per_site.append(layer(x))
    layer.site_weights = w
    mixed = layer(x)
    bcast = (shape[0], *([1] * (len(shape) - 1)))
    expected = sum(w[:, k].reshape(bcast) * per_site[k] for k in range(S))
    torch.testing.assert_close(mixed, expected, atol=1e-5, rtol=1e-5)


def test_higher_terms_clamped_for_outlier_linear_term_exact() -> None:
    """For an outlier, powers >= 2 act on the clamped value (bounded) while the degree-1 term stays exact."""
    layer = HarmonyNorm(1, 1, degree=3, clip=4.0)
    a1, a2, a3, b = 1.5, 0.7, -0.3, 0.25
    with torch.no_grad():
        layer.coef.copy_(torch.tensor([a1, a2, a3]).reshape(1, 3, 1))
        layer.bias.fill_(b)
    x = torch.zeros(1, 1, 10, 10, 10)
    x[0, 0, 3, 4, 5] = 1000.0  # one spike among 1000 voxels
    x_hat = layer.standardize(x)
    assert x_hat.max() > 30.0  # far outside the clamp range
    t = x_hat.clamp(-4.0, 4.0)
    expected = a1 * x_hat + b + a2 * t**2 + a3 * t**3
    with torch.no_grad():
        y = layer(x)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    spike = (0, 0, 3, 4, 5)
    higher = y[spike] - (a1 * x_hat[spike] + b)
    assert abs(float(higher)) <= abs(a2) * 16 + abs(a3) * 64 + 1e-4
    unclamped = a2 * x_hat[spike] ** 2 + a3 * x_hat[spike] ** 3
    assert abs(float(unclamped)) > 100 * abs(float(higher))

    # degree 1 (no higher terms): the affine map is exact even far outside the clamp range
    linear = HarmonyNorm(1, 1, degree=1, clip=4.0)
    with torch.no_grad():
        linear.coef.fill_(a1)
        linear.bias.fill_(b)
    torch.testing.assert_close(linear(x), a1 * x_hat + b, atol=1e-5, rtol=1e-5)


def test_gradients_reach_coefficients_and_bias() -> None:
    """Backprop gives finite, non-zero gradients to every coefficient and the bias; the bias gradient is exact."""
    layer = _randomized(HarmonyNorm(C, S, degree=3))
    x = _input("channels_first", (2, C, 6, 5, 4))
    x[0, 1, 2, 2, 2] = 500.0  # an outlier must not blow up the gradients
    torch.manual_seed(5)
    w = torch.softmax(torch.randn(2, S), dim=1)
    upstream = torch.randn(2, C, 6, 5, 4)
    layer.site_weights = w
    (layer(x) * upstream).sum().backward()
    assert layer.coef.grad is not None and layer.bias.grad is not None
    assert torch.isfinite(layer.coef.grad).all() and torch.isfinite(layer.bias.grad).all()
    assert (layer.coef.grad.abs().sum(dim=(0, 2)) > 0).all()  # every polynomial degree learns
    # d(sum y * g)/d bias[s, c] = sum_b w[b, s] * sum_voxels g[b, c]
    expected_bias_grad = w.T @ upstream.flatten(2).sum(2)
    torch.testing.assert_close(layer.bias.grad, expected_bias_grad, atol=1e-4, rtol=1e-4)


def test_site_weights_are_required_and_checked() -> None:
    """A multi-site layer refuses to run without site weights, or with weights of the wrong shape."""
    layer = HarmonyNorm(C, S)
    x = _input("channels_first", (2, C, 4, 4, 4))
    with pytest.raises(RuntimeError, match="site weights must be set"):
        layer(x)
    layer.site_weights = torch.full((2, S + 1), 1.0 / (S + 1))
    with pytest.raises(ValueError, match="expected"):
        layer(x)


@pytest.mark.parametrize(("layout", "shape"), LAYOUT_SHAPES)
@pytest.mark.parametrize("degree", [1, 3])
def test_fused_shared_path_equals_per_sample_path(layout: str, shape: tuple[int, ...], degree: int) -> None:
    """Weights shared by the batch (inference) take the fused kernel; each sample must match its own run."""
    layer = _randomized(HarmonyNorm(C, S, degree=degree, layout=layout))  # type: ignore[arg-type]
    x = _input(layout, shape)
    w = torch.softmax(torch.randn(1, S), dim=1)
    layer.site_weights = w.expand(shape[0], -1)
    shared = layer(x)
    per_sample = []
    for b in range(shape[0]):  # a batch of different weights forces the unfused path; keep row b only
        other = torch.softmax(torch.randn(shape[0], S), dim=1)
        other[b] = w[0]
        layer.site_weights = other
        per_sample.append(layer(x)[b])
    torch.testing.assert_close(shared, torch.stack(per_sample), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("layout", "shape"), LAYOUT_SHAPES)
def test_each_sample_trains_its_own_sites_row_when_the_rows_are_equal(layout: str, shape: tuple[int, ...]) -> None:
    """At initialization every site's row holds the same values; a batch of two sites must still send each sample's
    gradient to its own site's row (the fused kernel is for weights the batch shares, not for equal-valued rows)."""
    layer = HarmonyNorm(C, S, degree=1, layout=layout)  # type: ignore[arg-type]
    x = _input(layout, shape)
    sites = torch.arange(shape[0]) % S
    layer.site_weights = F.one_hot(sites, S).float()
    (layer(x) * torch.randn_like(x)).sum().backward()
    assert layer.coef.grad is not None
    for s in range(S):
        assert (layer.coef.grad[s].abs().sum() > 0) == bool((sites == s).any()), s


def _reference(layer: HarmonyNorm, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The layer's formula written out term by term: each site's polynomial of the standardized value, mixed."""
    x_hat = layer.standardize(x)
    t = x_hat.clamp(-layer.clip, layer.clip)
    if layer.layout == "channels_first":
        channel = (1, C, *([1] * (x.dim() - 2)))
        sample = (x.shape[0], *([1] * (x.dim() - 1)))
    else:
        channel, sample = (C,), (x.shape[0], *([1] * (x.dim() - 1)))
    out = torch.zeros_like(x)
    for s in range(S):
        y = layer.bias[s].reshape(channel) + layer.coef[s, 0].reshape(channel) * x_hat
        for k in range(2, layer.degree + 1):
            y = y + layer.coef[s, k - 1].reshape(channel) * t**k
        out = out + w[:, s].reshape(sample) * y
    return out


@pytest.mark.parametrize(("layout", "shape"), LAYOUT_SHAPES)
@pytest.mark.parametrize("degree", [1, 2, 3, 4])
@pytest.mark.parametrize("shared", [True, False])
def test_fused_kernels_equal_the_formula_with_gradients(
    layout: str, shape: tuple[int, ...], degree: int, shared: bool
) -> None:
    """Output and gradients (input, coefficients, bias) in float32 equal the formula computed term by term,
    with weights shared by the batch (inference) or per sample (training), an outlier beyond the clamp included."""
    layer = _randomized(HarmonyNorm(C, S, degree=degree, layout=layout))  # type: ignore[arg-type]
    x = _input(layout, shape)
    x.reshape(-1)[7] = 400.0
    torch.manual_seed(4)
    w = torch.softmax(torch.randn(1 if shared else shape[0], S), dim=1).expand(shape[0], S)
    upstream = torch.randn(shape)
    grads = []
    for run in (layer, lambda v: _reference(layer, v, w)):
        layer.zero_grad()
        xi = x.clone().requires_grad_(True)
        layer.site_weights = w
        out = run(xi)
        (out * upstream).sum().backward()
        grads.append((out.detach(), xi.grad, layer.coef.grad, layer.bias.grad))
    for fused, formula in zip(*grads):
        torch.testing.assert_close(fused, formula, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("per_sample", [False, True])
def test_channel_affine_is_scale_times_x_plus_shift(per_sample: bool) -> None:
    """The per-channel kernel computes scale * x + shift, with the gradients of that expression."""
    x = _input("channels_first", (2, C, 6, 5, 4)).requires_grad_(True)
    rows = 2 if per_sample else 1
    scale, shift = torch.randn(rows, C, requires_grad=True), torch.randn(rows, C, requires_grad=True)
    upstream = torch.randn(x.shape)
    fused = channel_affine(x, scale, shift)
    expected = scale.reshape(rows, C, 1, 1, 1) * x + shift.reshape(rows, C, 1, 1, 1)
    torch.testing.assert_close(fused, expected)
    got = torch.autograd.grad((fused * upstream).sum(), (x, scale, shift))
    want = torch.autograd.grad((expected * upstream).sum(), (x, scale, shift))
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("degree", [1, 3])
def test_bfloat16_autocast_keeps_maps_in_bfloat16(degree: int) -> None:
    """Under CPU bfloat16 autocast the layer writes a bfloat16 map (no float32 copy) close to the float32 one."""
    layer = _randomized(HarmonyNorm(C, S, degree=degree)).eval()
    with torch.no_grad():
        layer.coef.mul_(0.3)
    x = _input("channels_first", (2, C, 8, 8, 8))
    layer.site_weights = torch.softmax(torch.randn(1, S), dim=1).expand(2, S)
    with torch.inference_mode():
        full = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = layer(x.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), full, atol=0.1, rtol=0.02)
