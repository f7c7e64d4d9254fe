"""Building blocks: equalized-learning-rate layers, modulated convolution, resampling, mbstd.

Equalized learning rate (Karras et al.): weights are stored at unit scale and multiplied by
1/sqrt(fan_in) at run time, so Adam's per-parameter step is the same size for every layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (0.2) with the sqrt(2) gain that keeps activations at unit variance."""
    return F.leaky_relu(x, 0.2) * LRELU_GAIN


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit root-mean-square (used for z and caption embeddings)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate and an optional lrelu."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 bias_init: float = 0.0, lr_mul: float = 1.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias * self.lr_mul if self.bias is not None else None
        x = F.linear(x, self.weight * self.weight_gain, b)
        return lrelu(x) if self.activation else x

    def extra_repr(self) -> str:
        out, inp = self.weight.shape
        return f"in={inp}, out={out}, lr_mul={self.lr_mul}, activation={self.activation}"


class EqualConv2d(nn.Module):
    """Convolution with equalized learning rate (stride 1, same padding) and an optional lrelu."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 bias: bool = True, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)
        return lrelu(x) if self.activation else x


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """2x upsampling with the [1, 3, 3, 1] FIR filter (what bilinear interpolation computes)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """2x downsampling with a box filter (cheap, and fine after a 3x3 conv)."""
    return F.avg_pool2d(x, 2)


def demodulation(weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 / ||W * s|| per sample and output channel, `[B, O]`, computed in float32.

    `weight` is `[O, I, k, k]` (already scaled), `styles` `[B, I]`.
    """
    with torch.autocast(device_type=styles.device.type, enabled=False):
        w2 = weight.float().square().sum(dim=[2, 3])  # [O, I]
        return (styles.float().square() @ w2.t() + eps).rsqrt()  # [B, O]


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *,
                     demodulate: bool = True, grouped: bool = False) -> torch.Tensor:
    """StyleGAN2's modulated convolution for a batch, `x [B, I, H, W]` -> `[B, O, H, W]`.

    `grouped=False` scales the activations instead of the weights: conv(x * s, W) * d equals
    conv(x, W * s * d) sample by sample, but runs as one dense convolution over the batch
    (much cheaper on CPU, and it keeps channels_last). `grouped=True` builds per-sample weights
    and runs one grouped convolution (StyleGAN2's fused path).
    """
    batch, in_ch = x.shape[:2]
    out_ch, _, k, _ = weight.shape
    dcoefs = demodulation(weight, styles) if demodulate else None  # [B, O]
    if not grouped:
        x = x * styles.to(x.dtype).reshape(batch, in_ch, 1, 1)
        x = F.conv2d(x, weight.to(x.dtype), padding=k // 2)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(batch, out_ch, 1, 1)
        return x
    w = weight.unsqueeze(0) * styles.reshape(batch, 1, in_ch, 1, 1)  # [B, O, I, k, k]
    if dcoefs is not None:
        w = w * dcoefs.reshape(batch, out_ch, 1, 1, 1)
    h, wd = x.shape[2:]
    x = x.reshape(1, batch * in_ch, h, wd)
    w = w.reshape(batch * out_ch, in_ch, k, k).to(x.dtype)
    x = F.conv2d(x, w, padding=k // 2, groups=batch)
    return x.reshape(batch, out_ch, h, wd)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, num_channels: int = 1) -> torch.Tensor:
    """Append the standard deviation across groups of samples as extra feature maps.

    A group is `group_size` consecutive samples, so a batch split into contiguous per-rank
    slices (each a multiple of the group) forms the same groups as the whole batch.
    """
    b, c, h, w = x.shape
    g = min(group_size, b)
    while b % g:  # a group must divide the batch
        g -= 1
    f = num_channels
    y = x.to(torch.promote_types(x.dtype, torch.float32))  # float32 at least, never less
    y = y.reshape(-1, g, f, c // f, h, w)  # [n, G, F, c, H, W]
    y = y - y.mean(dim=1, keepdim=True)
    y = (y.square().mean(dim=1) + 1e-8).sqrt()  # [n, F, c, H, W]
    y = y.mean(dim=[2, 3, 4])  # [n, F]
    y = y.repeat_interleave(g, dim=0).reshape(b, f, 1, 1).expand(b, f, h, w).to(x.dtype)
    return torch.cat([x, y], dim=1)
