"""Projection discriminator: residual blocks, minibatch stddev, and a caption projection.

    score(x, e) = psi(phi(x)) + <W e, phi(x)> / sqrt(cmap_dim)      (Miyato & Koyama, 2018)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gan_t2i.networks.generator import channels_at
from gan_t2i.networks.layers import (
    EqualConv2d,
    EqualLinear,
    downsample2x,
    minibatch_stddev,
)
from gan_t2i.networks.text import TextEmbed


class DiscriminatorBlock(nn.Module):
    """Residual block that halves the resolution: conv3x3, down, conv3x3; skip = down + 1x1."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, activation=True)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, activation=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(downsample2x(x))
        x = self.conv1(downsample2x(self.conv0(x)))
        return (x + y) * math.sqrt(0.5)


class Discriminator(nn.Module):
    """Text-conditioned projection discriminator (pure module: no file or network I/O)."""

    def __init__(self, *, c_dim: int, resolution: int = 64, channel_base: int = 4096,
                 channel_max: int = 128, cmap_dim: int | None = None, projection: bool = True,
                 mbstd_group: int = 4, mbstd_channels: int = 1):
        super().__init__()
        log2 = int(math.log2(resolution))
        if 2**log2 != resolution or not 8 <= resolution <= 1024:
            raise ValueError(f"resolution must be a power of two in [8, 1024], got {resolution}")
        self.c_dim, self.resolution, self.projection = c_dim, resolution, projection
        ch = lambda r: channels_at(r, channel_base, channel_max)  # noqa: E731
        self.from_rgb = EqualConv2d(3, ch(resolution), 1, activation=True)
        self.blocks = nn.Sequential(*[
            DiscriminatorBlock(ch(2**i), ch(2 ** (i - 1))) for i in range(log2, 2, -1)
        ])
        c4 = ch(4)
        self.mbstd_group, self.mbstd_channels = mbstd_group, mbstd_channels
        self.conv = EqualConv2d(c4 + mbstd_channels, c4, 3, activation=True)
        self.fc = EqualLinear(c4 * 16, c4, activation=True)
        self.cmap_dim = cmap_dim or c4
        self.out = EqualLinear(c4, 1)  # psi
        self.feature_proj = EqualLinear(c4, self.cmap_dim) if projection else None
        self.text_embed = TextEmbed(c_dim, self.cmap_dim, activation=False) if projection else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, R, R] -> phi(x) [B, C4]."""
        assert x.shape[1:] == (3, self.resolution, self.resolution), x.shape
        x = self.blocks(self.from_rgb(x))
        x = minibatch_stddev(x, self.mbstd_group, self.mbstd_channels)
        x = self.conv(x)
        return self.fc(x.flatten(1))

    def score(self, phi: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Logits [B] from features phi [B, C4] and caption embeddings c [B, c_dim]."""
        out = self.out(phi).squeeze(1)
        if self.projection and c is not None:
            cmap = self.text_embed(c.to(phi.dtype))  # [B, cmap_dim]
            proj = (self.feature_proj(phi) * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)
            out = out + proj
        return out

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Images [B, 3, R, R] in [-1, 1] and captions [B, c_dim] -> logits [B]."""
        return self.score(self.features(x), c)
