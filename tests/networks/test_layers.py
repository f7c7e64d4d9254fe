"""Tests of the building blocks: modulated convolution, equalized layers, minibatch stddev."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gan_t2i.networks.layers import (
    EqualConv2d,
    EqualLinear,
    demodulation,
    minibatch_stddev,
    modulated_conv2d,
    normalize_2nd_moment,
)


def _reference_modconv(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                       demodulate: bool, eps: float = 1e-8) -> torch.Tensor:
    """StyleGAN2's modulated convolution, one sample at a time, from its definition."""
    outs = []
    for xi, si in zip(x, styles):
        w = weight * si.reshape(1, -1, 1, 1)  # [O, I, k, k]
        if demodulate:
            w = w / (w.square().sum(dim=[1, 2, 3], keepdim=True) + eps).sqrt()
        outs.append(F.conv2d(xi.unsqueeze(0), w, padding=weight.shape[-1] // 2))
    return torch.cat(outs)


def _modconv_inputs(seed: int = 0, k: int = 3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 7, 6, generator=gen)  # non-square maps catch H/W mix-ups
    weight = torch.randn(4, 5, k, k, generator=gen) / math.sqrt(5 * k * k)
    styles = torch.randn(3, 5, generator=gen) + 1.0
    return x, weight, styles


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("grouped", [False, True])
def test_modulated_conv2d_matches_per_sample_reference(grouped, demodulate, k):
    x, weight, styles = _modconv_inputs(k=k)
    out = modulated_conv2d(x, weight, styles, demodulate=demodulate, grouped=grouped)
    ref = _reference_modconv(x, weight, styles, demodulate)
    assert out.shape == (3, 4, 7, 6)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_modulated_conv2d_samples_are_independent():
    """Changing one sample's style must not change any other sample's output."""
    x, weight, styles = _modconv_inputs()
    for grouped in (False, True):
        a = modulated_conv2d(x, weight, styles, grouped=grouped)
        styles2 = styles.clone()
        styles2[1] *= 3.0
        styles2[1, 0] = -2.0
        b = modulated_conv2d(x, weight, styles2, grouped=grouped)
        torch.testing.assert_close(a[[0, 2]], b[[0, 2]])
        assert not torch.allclose(a[1], b[1], atol=1e-3)


@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv2d_paths_have_equal_gradients(demodulate):
    x0, w0, s0 = _modconv_inputs(seed=1)
    upstream = torch.randn(3, 4, 7, 6, generator=torch.Generator().manual_seed(2))
    grads = []
    for grouped in (False, True):
        x, w, s = (t.clone().requires_grad_(True) for t in (x0, w0, s0))
        out = modulated_conv2d(x, w, s, demodulate=demodulate, grouped=grouped)
        (out * upstream).sum().backward()
        grads.append((x.grad, w.grad, s.grad))
    for g_dense, g_grouped in zip(*grads):
        assert g_dense is not None and g_dense.abs().sum() > 0
        torch.testing.assert_close(g_dense, g_grouped, rtol=1e-4, atol=1e-5)


def test_demodulation_matches_definition_and_is_float32_under_bf16_autocast():
    _, weight, styles = _modconv_inputs()
    expected = ((weight.unsqueeze(0) * styles[:, None, :, None, None]).square()
                .sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [B, O]
    torch.testing.assert_close(demodulation(weight, styles), expected)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        d = demodulation(weight.bfloat16(), styles.bfloat16())
        assert torch.mm(styles, styles.t()).dtype == torch.bfloat16  # autocast really is on
    assert d.dtype == torch.float32
    assert d.shape == (3, 4)
    torch.testing.assert_close(d, expected, rtol=2e-2, atol=0)  # only the bf16 inputs differ


def test_modulated_conv2d_under_bf16_autocast_is_close_to_float32():
    x, weight, styles = _modconv_inputs()
    ref = modulated_conv2d(x, weight, styles)
    for grouped in (False, True):
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            out = modulated_conv2d(x, weight, styles, grouped=grouped)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


def test_equal_linear_output_has_unit_std_at_init():
    torch.manual_seed(0)
    layer = EqualLinear(512, 256)
    x = torch.randn(1024, 512)
    with torch.no_grad():
        y = layer(x)
    assert abs(y.std().item() - 1.0) < 0.1
    assert abs(y.mean().item()) < 0.05
    # The same holds with a tiny learning-rate multiplier (the mapping network's setting).
    torch.manual_seed(0)
    slow = EqualLinear(512, 256, lr_mul=0.01)
    with torch.no_grad():
        assert abs(slow(x).std().item() - 1.0) < 0.1


def test_equal_linear_activation_keeps_unit_second_moment():
    torch.manual_seed(0)
    layer = EqualLinear(512, 256, activation=True)
    with torch.no_grad():
        y = layer(torch.randn(1024, 512))
    # lrelu with the sqrt(2) gain: E[y^2] = (1 + 0.2^2) for unit-variance input.
    assert abs(y.square().mean().item() - 1.04) < 0.1


@pytest.mark.parametrize("lr_mul", [1.0, 0.01, 3.0])
def test_equal_linear_effective_weight_and_bias_scale_with_lr_mul(lr_mul):
    torch.manual_seed(0)
    layer = EqualLinear(16, 8, bias_init=0.5, lr_mul=lr_mul)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(4, 16)
    expected = F.linear(x, layer.weight * lr_mul / math.sqrt(16), layer.bias * lr_mul)
    torch.testing.assert_close(layer(x), expected)
    # The stored weight is drawn at 1/lr_mul, so the effective weight is ~N(0, 1/fan_in).
    assert abs((layer.weight * lr_mul).std().item() - 1.0) < 0.2


def test_equal_linear_lr_mul_scales_output_for_the_same_stored_weight():
    torch.manual_seed(0)
    fast = EqualLinear(16, 8, bias=False)
    slow = EqualLinear(16, 8, bias=False, lr_mul=0.01)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(4, 16)
    torch.testing.assert_close(slow(x), 0.01 * fast(x))
    # ... and the gradient w.r.t. the stored weight is scaled the same way (Adam then rescales
    # the step, which is how lr_mul slows the layer down).
    slow(x).sum().backward()
    fast(x).sum().backward()
    torch.testing.assert_close(slow.weight.grad, 0.01 * fast.weight.grad)


def test_equal_linear_bias_init():
    layer = EqualLinear(4, 3, bias_init=1.0)
    torch.testing.assert_close(layer(torch.zeros(2, 4)), torch.ones(2, 3))
    assert EqualLinear(4, 3, bias=False).bias is None


def test_equal_conv2d_matches_scaled_conv_and_keeps_shape():
    torch.manual_seed(0)
    conv = EqualConv2d(4, 6, 3)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 4, 5, 7)
    expected = F.conv2d(x, conv.weight / math.sqrt(4 * 9), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape == (2, 6, 5, 7)
    big = EqualConv2d(64, 32, 3)
    with torch.no_grad():
        assert abs(big(torch.randn(8, 64, 16, 16)).std().item() - 1.0) < 0.1


def test_normalize_2nd_moment_gives_unit_rms():
    x = torch.randn(5, 12) * 7.0
    y = normalize_2nd_moment(x)
    torch.testing.assert_close(y.square().mean(dim=1), torch.ones(5))
    torch.testing.assert_close(y / y.norm(dim=1, keepdim=True), x / x.norm(dim=1, keepdim=True))


def test_minibatch_stddev_adds_channels():
    x = torch.randn(8, 6, 4, 4)
    assert minibatch_stddev(x).shape == (8, 7, 4, 4)
    assert minibatch_stddev(x, num_channels=2).shape == (8, 8, 4, 4)
    torch.testing.assert_close(minibatch_stddev(x)[:, :6], x)


def test_minibatch_stddev_is_zero_for_identical_samples():
    x = torch.randn(1, 6, 4, 4).repeat(8, 1, 1, 1)
    y = minibatch_stddev(x)
    # sqrt(0 + 1e-8) = 1e-4: zero up to the epsilon.
    assert y[:, 6].abs().max().item() <= 1.01e-4
    z = minibatch_stddev(x + torch.randn_like(x))
    assert z[:, 6].min().item() > 0.1


def test_minibatch_stddev_value_matches_definition():
    torch.manual_seed(0)
    x = torch.randn(8, 6, 4, 4)
    y = minibatch_stddev(x, group_size=4)[:, 6]  # [B, H, W]
    # A group is G consecutive samples; each group shares one value.
    for n in range(2):
        members = x[4 * n:4 * n + 4]  # [G, C, H, W]
        std = members.var(dim=0, unbiased=False).add(1e-8).sqrt().mean()
        torch.testing.assert_close(y[4 * n:4 * n + 4], std.expand(4, 4, 4))


def test_minibatch_stddev_of_contiguous_slices_equals_the_whole_batch():
    torch.manual_seed(0)
    x = torch.randn(16, 6, 4, 4)
    whole = minibatch_stddev(x, group_size=4)
    halves = torch.cat([minibatch_stddev(x[:8], group_size=4), minibatch_stddev(x[8:], group_size=4)])
    torch.testing.assert_close(halves, whole, rtol=0, atol=0)


@pytest.mark.parametrize("batch,group", [(6, 3), (2, 2), (5, 1), (3, 3), (7, 1)])
def test_minibatch_stddev_with_batch_not_divisible_by_group(batch, group):
    torch.manual_seed(0)
    x = torch.randn(batch, 4, 3, 3)
    y = minibatch_stddev(x, group_size=4)
    assert y.shape == (batch, 5, 3, 3)
    assert torch.isfinite(y).all()
    for i in range(batch // group):
        members = x[i * group:(i + 1) * group]
        assert members.shape[0] == group
        std = members.var(dim=0, unbiased=False).add(1e-8).sqrt().mean()
        torch.testing.assert_close(y[i * group:(i + 1) * group, 4], std.expand(group, 3, 3))


def test_minibatch_stddev_keeps_float64_precision_and_low_precision_dtypes():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    y = minibatch_stddev(x, group_size=2)
    assert y.dtype == torch.float64
    for n in range(2):
        std = x[2 * n:2 * n + 2].var(dim=0, unbiased=False).add(1e-8).sqrt().mean()
        torch.testing.assert_close(y[2 * n:2 * n + 2, 6], std.expand(2, 3, 3), rtol=1e-12, atol=0)
    low = minibatch_stddev(x.bfloat16(), group_size=2)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low[:, 6].double(), y[:, 6], rtol=1e-2, atol=0)
