"""Caption-conditioning modules shared by the generator and the discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gan_t2i.networks.layers import EqualLinear, normalize_2nd_moment


class TextEmbed(nn.Module):
    """Caption embedding e [B, c_dim] -> features [B, out_dim].

    Sentence-transformer embeddings are unit-norm (each entry ~1/sqrt(D)), nearly invisible to
    equalized layers; they are centred on the dataset mean (a buffer, zero until
    `set_statistics` is called) and rescaled to unit RMS first. Centring matters: captions that
    differ in one word are close in the raw space (cosine ~0.8-0.95) and much further apart
    after the shared mean is removed.
    """

    def __init__(self, c_dim: int, out_dim: int, *, activation: bool = True):
        super().__init__()
        self.register_buffer("mean", torch.zeros(c_dim))
        self.proj = EqualLinear(c_dim, out_dim, activation=activation)

    def set_statistics(self, mean: torch.Tensor) -> None:
        """Use a dataset's mean caption embedding for centring."""
        self.mean.copy_(torch.as_tensor(mean, dtype=self.mean.dtype))

    def normalized(self, c: torch.Tensor) -> torch.Tensor:
        """Centred, unit-RMS caption embedding [B, c_dim]."""
        return normalize_2nd_moment(c - self.mean.to(c.dtype))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.proj(self.normalized(c))


class CrossAttention(nn.Module):
    """Feature maps attend to caption token embeddings (residual; output starts at zero)."""

    def __init__(self, channels: int, token_dim: int, *, heads: int = 4):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm = nn.GroupNorm(1, channels, affine=False)
        self.q = EqualLinear(channels, channels, bias=False)
        self.kv = EqualLinear(token_dim, 2 * channels, bias=False)
        self.out = EqualLinear(channels, channels, bias=False)
        self.gain = nn.Parameter(torch.zeros([]))  # starts as identity: training turns it on

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W], tokens [B, T, Dt], mask [B, T] (True = real token)."""
        b, c, h, w = x.shape
        q = self.q(self.norm(x).flatten(2).transpose(1, 2))  # [B, HW, C]
        k, v = self.kv(normalize_2nd_moment(tokens.to(q.dtype), dim=2)).chunk(2, dim=2)
        split = lambda t: t.reshape(b, t.shape[1], self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        attn_mask = mask[:, None, None, :].to(torch.bool)  # [B, 1, 1, T]
        y = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=attn_mask)
        y = self.out(y.transpose(1, 2).reshape(b, h * w, c))  # [B, HW, C]
        y = y.transpose(1, 2).reshape(b, c, h, w)
        return x + self.gain.to(x.dtype) * y
