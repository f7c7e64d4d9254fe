"""Text-conditioned StyleGAN2-style generator.

z [B, z_dim] and a caption embedding e [B, c_dim] -> image [B, 3, R, R] in [-1, 1].

    e --normalise--> text_embed --t [B, t_dim]-----------------------------+
    z --normalise--> [z, t] --mapping (lr_mul 0.01)--> w [B, w_dim]          |
                                                   ws [B, num_ws, w_dim]  |
    every layer's style = affine([w_i, t])  <-- the caption reaches every layer directly
    4x4 const -> modulated 3x3 convs (+noise) -> up -> ... ; ToRGB at each resolution, summed
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gan_t2i import shard
from gan_t2i.networks.layers import (
    EqualLinear,
    lrelu,
    modulated_conv2d,
    normalize_2nd_moment,
    upsample2x,
)
from gan_t2i.networks.text import TextEmbed


def channels_at(res: int, channel_base: int, channel_max: int) -> int:
    """StyleGAN's channel rule: channel_base / res, capped at channel_max."""
    return int(min(channel_base // res, channel_max))


class MappingNetwork(nn.Module):
    """[normalised z, caption features] -> w, with a running average of w for truncation."""

    def __init__(self, *, z_dim: int, t_dim: int, w_dim: int, num_layers: int, lr_mul: float,
                 w_avg_beta: float = 0.995):
        super().__init__()
        dims = [z_dim + t_dim] + [w_dim] * num_layers
        self.layers = nn.Sequential(*[
            EqualLinear(dims[i], dims[i + 1], lr_mul=lr_mul, activation=True)
            for i in range(num_layers)
        ])
        self.z_dim, self.w_dim, self.w_avg_beta = z_dim, w_dim, w_avg_beta
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, t: torch.Tensor, *, update_w_avg: bool = False
                ) -> torch.Tensor:
        x = torch.cat([normalize_2nd_moment(z), t], dim=1)  # [B, z_dim + t_dim]
        w = self.layers(x)  # [B, w_dim]
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().float().mean(0).lerp(self.w_avg, self.w_avg_beta))
        return w


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + per-pixel noise with a learned strength + bias + lrelu."""

    def __init__(self, in_channels: int, out_channels: int, *, style_dim: int, resolution: int,
                 up: bool = False, grouped: bool = False):
        super().__init__()
        self.affine = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.weight_gain = 1.0 / math.sqrt(in_channels * 9)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.up, self.grouped, self.resolution = up, grouped, resolution

    def forward(self, x: torch.Tensor, style_in: torch.Tensor, noise_mode: str = "random"
                ) -> torch.Tensor:
        styles = self.affine(style_in)  # [B, I]
        if self.up:
            x = upsample2x(x)
        x = modulated_conv2d(x, self.weight * self.weight_gain, styles, grouped=self.grouped)
        if noise_mode == "random":
            b, _, h, w = x.shape
            x = x + shard.randn(b, 1, h, w, device=x.device, dtype=x.dtype) * self.noise_strength
        elif noise_mode == "const":
            x = x + (self.noise_const * self.noise_strength).to(x.dtype)
        return lrelu(x + self.bias.to(x.dtype).reshape(1, -1, 1, 1))


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB, without demodulation (as StyleGAN2)."""

    def __init__(self, in_channels: int, *, style_dim: int):
        super().__init__()
        self.affine = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(3, in_channels, 1, 1))
        self.weight_gain = 1.0 / math.sqrt(in_channels)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor, style_in: torch.Tensor) -> torch.Tensor:
        styles = self.affine(style_in) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)


class SynthesisBlock(nn.Module):
    """One resolution: (upsample +) two modulated convs and a ToRGB added to the skip image."""

    def __init__(self, in_channels: int, out_channels: int, *, resolution: int, style_dim: int,
                 grouped: bool, attention: nn.Module | None = None):
        super().__init__()
        first = in_channels == 0
        self.resolution = resolution
        if first:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
            self.convs = nn.ModuleList([SynthesisLayer(out_channels, out_channels, style_dim=style_dim,
                                                       resolution=resolution, grouped=grouped)])
        else:
            self.convs = nn.ModuleList([
                SynthesisLayer(in_channels, out_channels, style_dim=style_dim,
                               resolution=resolution, up=True, grouped=grouped),
                SynthesisLayer(out_channels, out_channels, style_dim=style_dim,
                               resolution=resolution, grouped=grouped),
            ])
        self.attention = attention
        self.torgb = ToRGB(out_channels, style_dim=style_dim)
        self.num_ws = len(self.convs) + 1

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, styles: list[torch.Tensor],
                tokens: tuple[torch.Tensor, torch.Tensor] | None, noise_mode: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if x is None:
            x = self.const.unsqueeze(0).expand(styles[0].shape[0], -1, -1, -1)
            x = x.to(styles[0].dtype).contiguous(memory_format=torch.channels_last)
        for conv, style in zip(self.convs, styles):
            x = conv(x, style, noise_mode)
        if self.attention is not None and tokens is not None:
            x = self.attention(x, *tokens)
        y = self.torgb(x, styles[-1])
        img = y if img is None else upsample2x(img).to(y.dtype) + y
        return x, img


class Generator(nn.Module):
    """Text-conditioned StyleGAN2-style generator (pure module: no file or network I/O)."""

    def __init__(self, *, c_dim: int, resolution: int = 64, z_dim: int = 64, w_dim: int = 128,
                 t_dim: int = 128, mapping_layers: int = 2, mapping_lr_mul: float = 0.01,
                 channel_base: int = 4096, channel_max: int = 128, grouped_modconv: bool = False,
                 attention_resolutions: tuple[int, ...] = (), token_dim: int | None = None,
                 attention_heads: int = 4):
        super().__init__()
        log2 = int(math.log2(resolution))
        if 2**log2 != resolution or not 8 <= resolution <= 1024:
            raise ValueError(f"resolution must be a power of two in [8, 1024], got {resolution}")
        self.c_dim, self.z_dim, self.w_dim, self.resolution = c_dim, z_dim, w_dim, resolution
        self.text_embed = TextEmbed(c_dim, t_dim)
        self.mapping = MappingNetwork(z_dim=z_dim, t_dim=t_dim, w_dim=w_dim,
                                      num_layers=mapping_layers, lr_mul=mapping_lr_mul)
        style_dim = w_dim + t_dim
        blocks, in_ch = [], 0
        for res in [2**i for i in range(2, log2 + 1)]:
            out_ch = channels_at(res, channel_base, channel_max)
            attention = None
            if res in attention_resolutions:
                from gan_t2i.networks.text import CrossAttention

                attention = CrossAttention(out_ch, token_dim or c_dim, heads=attention_heads)
            blocks.append(SynthesisBlock(in_ch, out_ch, resolution=res, style_dim=style_dim,
                                         grouped=grouped_modconv, attention=attention))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.num_ws = sum(b.num_ws for b in blocks) - (len(blocks) - 1)  # ToRGB shares next w

    def text_features(self, c: torch.Tensor) -> torch.Tensor:
        """Caption embedding [B, c_dim] -> learned text features t [B, t_dim]."""
        return self.text_embed(c)

    def map(self, z: torch.Tensor, c: torch.Tensor, *, psi: float = 1.0,
            w_center: torch.Tensor | None = None, update_w_avg: bool = False) -> torch.Tensor:
        """z, c -> w [B, w_dim], truncated toward `w_center` (default: the running mean w)."""
        w = self.mapping(z, self.text_features(c), update_w_avg=update_w_avg)
        if psi != 1.0:
            center = self.mapping.w_avg if w_center is None else w_center
            w = center.to(w.dtype) + psi * (w - center.to(w.dtype))
        return w

    @torch.no_grad()
    def caption_mean_w(self, c: torch.Tensor, num_samples: int = 256, seed: int = 0
                       ) -> torch.Tensor:
        """Per-caption mean w (over `num_samples` z), the centre for text-aware truncation."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        z = torch.randn(num_samples, self.z_dim, generator=gen).to(c.device)
        means = [self.map(z, ci.expand(num_samples, -1)).mean(0) for ci in c]
        return torch.stack(means)  # [B, w_dim]

    def synthesis(self, ws: torch.Tensor, c: torch.Tensor, *, noise_mode: str = "random",
                  tokens: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """ws [B, num_ws, w_dim] and caption c -> image [B, 3, R, R]."""
        assert ws.shape[1:] == (self.num_ws, self.w_dim), ws.shape
        t = self.text_features(c).to(ws.dtype)  # [B, t_dim]
        x = img = None
        i = 0
        for block in self.blocks:
            styles = [torch.cat([ws[:, i + j], t], dim=1) for j in range(block.num_ws)]
            x, img = block(x, img, styles, tokens, noise_mode)
            i += block.num_ws - 1
        return img

    def forward(self, z: torch.Tensor, c: torch.Tensor, *, psi: float = 1.0,
                w_center: torch.Tensor | None = None, noise_mode: str = "random",
                style_mixing: float = 0.0, update_w_avg: bool = False,
                tokens: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """z [B, z_dim], c [B, c_dim] -> image [B, 3, R, R]."""
        w = self.map(z, c, psi=psi, w_center=w_center, update_w_avg=update_w_avg)
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if style_mixing > 0:
            ws = self._mix_styles(ws, z, c, style_mixing)
        return self.synthesis(ws, c, noise_mode=noise_mode, tokens=tokens)

    def _mix_styles(self, ws: torch.Tensor, z: torch.Tensor, c: torch.Tensor, prob: float
                    ) -> torch.Tensor:
        """Style mixing regularisation: from a random layer on, use the w of another z."""
        b = ws.shape[0]
        cutoff = shard.randint(1, self.num_ws, b, 1, device=ws.device)
        cutoff = torch.where(shard.rand(b, 1, device=ws.device) < prob, cutoff, self.num_ws)
        w2 = self.map(shard.randn(b, z.shape[1], device=z.device, dtype=z.dtype), c)
        layer = torch.arange(self.num_ws, device=ws.device).unsqueeze(0)  # [1, num_ws]
        return torch.where((layer >= cutoff).unsqueeze(-1), w2.unsqueeze(1), ws)
