"""The GAN loss: owns G, D and the augmentation, and runs the phases of one iteration.

One iteration (the loop only orchestrates optimizers around these calls):
  1. `generate`  : fakes = G(z, c) for the batch's captions (graph kept for the G phase)
  2. `d_phase`   : D main on fakes (detached), reals, and reals paired with a mismatched caption
                   (matching-aware) or with their own caption one word swapped (hard
                   negatives, `swap_weight`); on every `r1_interval`-th step, lazy R1 on the
                   reals in float32, scaled by the interval as in StyleGAN2, in the same backward
  3. `g_phase`   : G main through the freshly updated D, back through the graph of step 1

Generating once per iteration saves a G forward compared to StyleGAN2-ADA's separate phases.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gan_t2i.networks import Discriminator, Generator
from gan_t2i.training.augment import DiffAugment
from gan_t2i.training.ema import requires_grad


@dataclass
class LossSettings:
    """The loss's knobs (see conf/loss/*.yaml)."""

    kind: str = "nonsaturating"  # nonsaturating | hinge
    r1_gamma: float = 1.0
    r1_interval: int = 16  # lazy R1 every N D steps; 0 disables R1
    mismatch_weight: float = 0.5  # matching-aware term: real image + wrong caption = negative
    swap_weight: float = 0.0  # real image + its caption with one attribute word swapped = negative
    swap_weight_g: float = 0.0  # G: its fake + the swapped caption should be rejected by D
    style_mixing: float = 0.0

    @property
    def uses_swaps(self) -> bool:
        """Whether either phase needs the swapped-caption negatives."""
        return self.swap_weight > 0 or self.swap_weight_g > 0


def mismatched(image_index: torch.Tensor) -> torch.Tensor:
    """For each sample, the index of another sample in the batch showing a different image."""
    b = image_index.shape[0]
    idx = torch.arange(b, device=image_index.device)
    out = torch.roll(idx, 1)
    for shift in range(2, b):  # rare: fix samples whose neighbour shows the same image
        same = image_index[out] == image_index
        if not same.any():
            break
        out = torch.where(same, torch.roll(idx, shift), out)
    return out


def _valid_mean(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of the valid entries (a detached statistic; 0 when none is valid)."""
    return (logits.detach() * valid).sum() / valid.sum().clamp(min=1)


def r1_penalty(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-sample squared gradient norm of D's output w.r.t. its (real) input images, [B].

    Uses autograd.grad with create_graph=True so the penalty is differentiable (and works
    under DDP, where backward hooks see only the final loss).
    """
    (grad,) = torch.autograd.grad(logits.sum(), images, create_graph=True)
    return grad.float().square().sum(dim=[1, 2, 3])


class GANLoss:
    """Runs the phases of a text-conditioned GAN iteration; returns detached statistics."""

    def __init__(self, G: Generator, D: Discriminator, augment: DiffAugment,
                 settings: LossSettings, *, amp: bool = False):
        if settings.kind not in ("nonsaturating", "hinge"):
            raise ValueError(f"unknown loss kind '{settings.kind}' (nonsaturating | hinge)")
        self.G, self.D, self.augment, self.s = G, D, augment, settings
        self.amp = amp

    def _autocast(self, device: torch.device, enabled: bool = True):
        if not (self.amp and enabled):
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def _d_out(self, images: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.D(self.augment(images), c).float()

    def generate(self, z: torch.Tensor, c: torch.Tensor,
                 tokens: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Fakes [B, 3, R, R] for captions c (and their tokens); the graph stays for `g_phase`."""
        requires_grad(self.G, True)
        with self._autocast(z.device):
            return self.G(z, c, style_mixing=self.s.style_mixing, update_w_avg=True, tokens=tokens)

    def d_phase(self, fakes: torch.Tensor, real: torch.Tensor, c: torch.Tensor,
                c_mismatch: torch.Tensor, *, do_r1: bool,
                swapped: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, dict]:
        """D main (+ lazy R1 when `do_r1`); returns (loss, stats). The caller runs backward.

        `c_mismatch` [B, D]: for each real image, the embedding of a caption of another image
        (`mismatched` picks them; the loop picks over the global batch). `swapped`: (embeddings
        [B, G, D], valid [B, G]) of each real's own caption with one word swapped, one variant
        per word group; used when `swap_weight` > 0. Each sample's term is the mean over its
        valid variants (zero without any), then averaged over the batch.
        """
        requires_grad(self.D, True)
        dev = real.device
        with self._autocast(dev):
            fake_logits = self._d_out(fakes.detach(), c)
        real = real.detach().requires_grad_(do_r1)
        with self._autocast(dev, enabled=not do_r1):  # R1's gradient norm stays in float32
            phi = self.D.features(self.augment(real))
            real_logits = self.D.score(phi, c).float()
            mis_logits = None
            if self.s.mismatch_weight > 0 and self.D.projection:
                mis_logits = self.D.score(phi, c_mismatch).float()
            swap_logits = None
            if self.s.swap_weight > 0 and self.D.projection and swapped is not None:
                swap_logits = self._swap_logits(phi, swapped)
        loss = self._d_loss(real_logits, fake_logits, mis_logits)
        stats = {"loss_D": loss.detach(), "D_real": real_logits.detach().mean(),
                 "D_fake": fake_logits.detach().mean()}
        if mis_logits is not None:
            stats["D_mismatch"] = mis_logits.detach().mean()
        if swap_logits is not None:
            loss = loss + self.s.swap_weight * self._swap_term(swap_logits, swapped[1])
            stats["D_swap"] = _valid_mean(swap_logits, swapped[1])
        if do_r1:
            penalty = r1_penalty(real_logits, real)
            loss = loss + penalty.mean() * (self.s.r1_gamma / 2) * self.s.r1_interval
            stats["r1_penalty"] = penalty.detach().mean()
        return loss, stats

    def _negative(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-sample loss of logits that should say "fake"."""
        return F.relu(1 + logits) if self.s.kind == "hinge" else F.softplus(logits)

    def _d_loss(self, real: torch.Tensor, fake: torch.Tensor, mis: torch.Tensor | None
                ) -> torch.Tensor:
        positive = F.relu(1 - real) if self.s.kind == "hinge" else F.softplus(-real)
        loss = positive.mean() + self._negative(fake).mean()
        return loss + (self.s.mismatch_weight * self._negative(mis).mean() if mis is not None else 0)

    def _swap_logits(self, phi: torch.Tensor, swapped: tuple[torch.Tensor, torch.Tensor]
                     ) -> torch.Tensor:
        """D's logits [B, G] of features phi [B, C] with each caption variant [B, G, D]."""
        b, g = swapped[1].shape
        logits = self.D.score(phi.repeat_interleave(g, 0), swapped[0].flatten(0, 1))
        return logits.float().view(b, g)

    def _swap_term(self, logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Batch mean of each sample's mean negative loss over its valid variants."""
        valid = valid.to(logits.dtype)
        return ((self._negative(logits) * valid).sum(1) / valid.sum(1).clamp(min=1)).mean()

    def g_phase(self, fakes: torch.Tensor, c: torch.Tensor,
                swapped: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, dict]:
        """G main through the current D; returns (loss, stats). The caller runs backward.

        With `swap_weight_g` > 0 and `swapped` (as in `d_phase`), G is also pushed to make D
        reject its fakes under the swapped captions: the image must show this caption's
        attribute, not merely a plausible one.
        """
        requires_grad(self.D, False)
        use_swaps = self.s.swap_weight_g > 0 and self.D.projection and swapped is not None
        with self._autocast(fakes.device):
            if use_swaps:
                phi = self.D.features(self.augment(fakes))
                logits = self.D.score(phi, c).float()
                swap_logits = self._swap_logits(phi, swapped)
            else:
                logits = self._d_out(fakes, c)
        loss = -logits.mean() if self.s.kind == "hinge" else F.softplus(-logits).mean()
        stats = {"loss_G": loss.detach()}
        if use_swaps:
            loss = loss + self.s.swap_weight_g * self._swap_term(swap_logits, swapped[1])
            stats["G_swap"] = _valid_mean(swap_logits, swapped[1])
        return loss, stats
