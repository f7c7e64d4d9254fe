"""DiffAugment (Zhao et al., 2020): differentiable augmentations applied to every image D sees.

Real and fake images go through the same policy, so D cannot tell them apart by augmentation,
and gradients flow through to G. Randomness comes from torch's global generator, whose state
the checkpoints save, so a resumed run draws the same augmentations; draws go through
`gan_t2i.shard`, so a sample gets the same augmentation on any number of ranks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from gan_t2i import shard

POLICIES = ("color", "translation", "cutout")


def _rand(x: torch.Tensor, *shape: int) -> torch.Tensor:
    return shard.rand(x.shape[0], *shape, device=x.device, dtype=x.dtype)


def color(x: torch.Tensor) -> torch.Tensor:
    """Random brightness, saturation and contrast per image."""
    x = x + (_rand(x, 1, 1, 1) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(x, 1, 1, 1) * 2) + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_rand(x, 1, 1, 1) + 0.5) + mean


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Random integer shift of up to `ratio` of the side, zero padding."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = shard.randint(-sh, sh + 1, b, 1, 1, device=x.device)
    tx = shard.randint(-sw, sw + 1, b, 1, 1, device=x.device)
    gy = (torch.arange(h, device=x.device).view(1, h, 1) + ty + 1).clamp(0, h + 1)  # [B, H, 1]
    gx = (torch.arange(w, device=x.device).view(1, 1, w) + tx + 1).clamp(0, w + 1)  # [B, 1, W]
    padded = F.pad(x, [1, 1, 1, 1])  # out-of-range indices land on the zero border
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[bi, gy, gx].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero a random square of `ratio` of the side per image."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = shard.randint(0, h + (1 - ch % 2), b, 1, 1, device=x.device) - ch // 2
    ox = shard.randint(0, w + (1 - cw % 2), b, 1, 1, device=x.device) - cw // 2
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= oy) & (ys < oy + ch) & (xs >= ox) & (xs < ox + cw)  # [B, H, W]
    return x * (~inside).unsqueeze(1).to(x.dtype)


_OPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "color": color, "translation": translation, "cutout": cutout,
}


class DiffAugment:
    """Applies a comma-separated policy ("color,translation,cutout"); '' or None is off."""

    def __init__(self, policy: str | None = "color,translation,cutout"):
        names = [p.strip() for p in (policy or "").split(",") if p.strip()]
        unknown = [n for n in names if n not in _OPS]
        if unknown:
            raise ValueError(f"unknown DiffAugment policy '{unknown[0]}' (choose from {POLICIES})")
        self.names = names

    @property
    def enabled(self) -> bool:
        """True when at least one augmentation is on."""
        return bool(self.names)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.names:
            x = _OPS[name](x)
        return x.contiguous(memory_format=torch.channels_last) if self.names else x

    def state_dict(self) -> dict:
        """Plain data for checkpoints (DiffAugment has no learned or adaptive state)."""
        return {"policy": ",".join(self.names)}
