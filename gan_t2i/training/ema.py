"""Exponential moving average of the generator's weights (the copy that is sampled)."""

from __future__ import annotations

import torch
from torch import nn


def ema_beta(batch_size: int, cur_nimg: int, *, half_life_kimg: float, rampup: float | None
             ) -> float:
    """Per-step decay for an EMA half-life in kimg, with StyleGAN2-ADA's ramp-up."""
    half_life_nimg = half_life_kimg * 1000
    if rampup is not None and rampup > 0:
        half_life_nimg = min(half_life_nimg, cur_nimg * rampup)
    if half_life_nimg <= 0:
        return 0.0
    return 0.5 ** (batch_size / half_life_nimg)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * model for parameters; buffers are copied."""
    ema_params = list(ema.parameters())
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def requires_grad(model: nn.Module, flag: bool) -> None:
    """Switch gradients of all parameters of a module on or off."""
    for p in model.parameters():
        p.requires_grad_(flag)
