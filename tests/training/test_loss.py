"""Tests of the GAN loss: R1 against finite differences, mismatched pairs, phases, closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gan_t2i.networks import Discriminator, Generator
from gan_t2i.training.augment import DiffAugment
from gan_t2i.training.loss import GANLoss, LossSettings, mismatched, r1_penalty

C_DIM = 16
RES = 8
TINY = {"channel_base": 256, "channel_max": 32}


def make_nets(seed: int = 0, **d_kw) -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    G = Generator(c_dim=C_DIM, resolution=RES, z_dim=8, w_dim=16, t_dim=16, **TINY)
    D = Discriminator(c_dim=C_DIM, resolution=RES, **TINY, **d_kw)
    return G, D


def make_loss(augment: str = "", *, seed: int = 0, d_kw: dict | None = None, **settings
              ) -> GANLoss:
    G, D = make_nets(seed, **(d_kw or {}))
    return GANLoss(G, D, DiffAugment(augment), LossSettings(**settings))


def batch(b: int = 4, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(b, 8, generator=gen)
    c = torch.randn(b, C_DIM, generator=gen)
    real = torch.rand(b, 3, RES, RES, generator=gen) * 2 - 1
    return z, c, real, torch.arange(b)


# ----------------------------------------------------------------------------- R1


@pytest.fixture(scope="module")
def d64():
    """A float64 discriminator at 8x8 (finite differences need the precision)."""
    torch.manual_seed(0)
    D = Discriminator(c_dim=C_DIM, resolution=8, mbstd_group=2, **TINY).double()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    c = torch.randn(2, C_DIM, generator=gen, dtype=torch.float64)
    return D, x, c


def _f(D: Discriminator, x: torch.Tensor, c: torch.Tensor) -> float:
    with torch.no_grad():
        return D(x, c).sum().item()


def _directional(D, x, c, v, eps: float = 1e-6) -> float:
    return (_f(D, x + eps * v, c) - _f(D, x - eps * v, c)) / (2 * eps)


def test_r1_gradient_matches_finite_differences(d64):
    D, x, c = d64
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x, c).sum(), x)
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        fd = _directional(D, x.detach(), c, v)
        assert fd == pytest.approx((grad * v).sum().item(), rel=1e-6, abs=1e-9)


def test_r1_penalty_is_the_squared_gradient_norm_per_sample(d64):
    D, x, c = d64
    x = x.clone().requires_grad_(True)
    penalty = r1_penalty(D(x, c), x)
    assert penalty.shape == (2,)
    # The gradient again, by a separate forward and autograd call ...
    (grad,) = torch.autograd.grad(D(x, c).sum(), x)
    expected = grad.square().sum(dim=[1, 2, 3])
    torch.testing.assert_close(penalty.double(), expected, rtol=1e-5, atol=0)
    # ... and checked without autograd: the derivative along sample i's unit gradient
    # direction is its gradient norm, and along a direction orthogonal to it, zero.
    gen = torch.Generator().manual_seed(5)
    for i in range(2):
        g = torch.zeros_like(grad)
        g[i] = grad[i]
        unit = g / g.norm()
        norm_fd = _directional(D, x.detach(), c, unit)
        assert norm_fd**2 == pytest.approx(penalty[i].item(), rel=1e-5)
        r = torch.zeros_like(grad)
        r[i] = torch.randn(grad[i].shape, generator=gen, dtype=torch.float64)
        r = r - (r * unit).sum() * unit
        assert abs(_directional(D, x.detach(), c, r / r.norm())) < 1e-6 * math.sqrt(norm_fd**2)


def test_r1_penalty_is_differentiable():
    torch.manual_seed(0)
    lin = nn.Linear(12, 1)
    x = torch.randn(3, 3, 2, 2, requires_grad=True)
    penalty = r1_penalty(lin(x.flatten(1)).squeeze(1), x)
    # For a linear D the gradient is the weight row: the same norm for every sample.
    torch.testing.assert_close(penalty, lin.weight.square().sum().expand(3))
    penalty.sum().backward()
    torch.testing.assert_close(lin.weight.grad, 2 * 3 * lin.weight.detach())


# ----------------------------------------------------------------------------- mismatched


@pytest.mark.parametrize("image_index", [
    [0, 0, 1, 1, 2, 2, 3, 3],
    [5, 5, 5, 1],
    [0, 1, 2, 3],
    [3, 3, 3, 3, 3, 7, 7, 2],
    [0, 1],
    [9, 9, 4],
])
def test_mismatched_never_pairs_a_sample_with_the_same_image(image_index):
    idx = torch.tensor(image_index)
    out = mismatched(idx)
    assert out.shape == idx.shape and out.dtype == torch.long
    assert ((out >= 0) & (out < len(idx))).all()
    assert (idx[out] != idx).all()


def test_mismatched_with_random_repeats():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        b = int(torch.randint(2, 12, (1,), generator=gen))
        idx = torch.randint(0, 4, (b,), generator=gen)
        if idx.unique().numel() < 2:
            continue
        out = mismatched(idx)
        assert ((out >= 0) & (out < b)).all()
        assert (idx[out] != idx).all(), (idx, out)


def test_mismatched_is_a_derangement_for_distinct_images():
    out = mismatched(torch.tensor([10, 11, 12, 13, 14]))
    assert sorted(out.tolist()) == list(range(5))
    assert (out != torch.arange(5)).all()


# ----------------------------------------------------------------------------- D phase


def test_d_phase_r1_adds_exactly_the_scaled_penalty():
    loss = make_loss(r1_gamma=2.5, r1_interval=4)
    z, c, real, idx = batch()
    with torch.no_grad():
        fakes = loss.G(z, c, noise_mode="const")
    plain, plain_stats = loss.d_phase(fakes, real, c, c[mismatched(idx)], do_r1=False)
    with_r1, stats = loss.d_phase(fakes, real, c, c[mismatched(idx)], do_r1=True)
    assert "r1_penalty" not in plain_stats
    assert set(stats) == {"loss_D", "D_real", "D_fake", "D_mismatch", "r1_penalty"}
    # The penalty, independently: gradient of D's real logits w.r.t. the real images.
    x = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss.D(x, c).sum(), x)
    penalty = grad.square().sum(dim=[1, 2, 3]).mean()
    torch.testing.assert_close(stats["r1_penalty"], penalty, rtol=1e-5, atol=0)
    assert penalty > 0
    torch.testing.assert_close(stats["loss_D"], plain.detach())  # loss_D is the main loss only
    torch.testing.assert_close(with_r1 - plain, stats["r1_penalty"] * 2.5 / 2 * 4,
                               rtol=1e-5, atol=1e-6)
    # The penalty takes part in backward (create_graph): D's gradients change.
    grads = []
    for value in (plain, with_r1):
        loss.D.zero_grad(set_to_none=True)
        value.backward(retain_graph=True)
        grads.append(loss.D.from_rgb.weight.grad.clone())
    assert (grads[0] - grads[1]).abs().max() > 1e-6


def test_d_phase_stats_match_the_logits():
    loss = make_loss(mismatch_weight=0.5)
    z, c, real, _ = batch()
    idx = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        fakes = loss.G(z, c, noise_mode="const")
        value, stats = loss.d_phase(fakes, real, c, c[mismatched(idx)], do_r1=False)
        real_logits = loss.D(real, c)
        fake_logits = loss.D(fakes, c)
        mis_logits = loss.D(real, c[mismatched(idx)])
    torch.testing.assert_close(stats["D_real"], real_logits.mean())
    torch.testing.assert_close(stats["D_fake"], fake_logits.mean())
    torch.testing.assert_close(stats["D_mismatch"], mis_logits.mean())
    torch.testing.assert_close(value, loss._d_loss(real_logits, fake_logits, mis_logits))


def test_mismatch_weight_zero_or_no_projection_drops_the_term():
    z, c, real, idx = batch()
    for loss in (make_loss(mismatch_weight=0.0), make_loss(d_kw={"projection": False})):
        with torch.no_grad():
            fakes = loss.G(z, c, noise_mode="const")
            value, stats = loss.d_phase(fakes, real, c, c[mismatched(idx)], do_r1=False)
            expected = loss._d_loss(loss.D(real, c), loss.D(fakes, c), None)
        assert "D_mismatch" not in stats
        torch.testing.assert_close(value, expected)


@pytest.mark.parametrize("kind", ["nonsaturating", "hinge"])
def test_swapped_captions_add_a_masked_negative_term(kind):
    loss = make_loss(kind=kind, mismatch_weight=0.5, swap_weight=2.0)
    z, c, real, idx = batch()
    c_swap = torch.randn(4, 3, C_DIM)  # three word groups
    valid = torch.tensor([[True, True, True], [False, False, False], [True, False, True],
                          [False, True, False]])
    with torch.no_grad():
        fakes = loss.G(z, c, noise_mode="const")
        without, _ = loss.d_phase(fakes, real, c, c[mismatched(idx)], do_r1=False)
        value, stats = loss.d_phase(fakes, real, c, c[mismatched(idx)], do_r1=False,
                                    swapped=(c_swap, valid))
        phi = loss.D.features(real)  # mbstd couples the batch: score each group on these
        logits = torch.stack([loss.D.score(phi, c_swap[:, k]) for k in range(3)], dim=1)
    negative = torch.relu(1 + logits) if kind == "hinge" else torch.nn.functional.softplus(logits)
    # per sample: mean over its variants (0 without any); then the batch mean
    per_sample = [negative[0].mean(), 0.0, negative[2, [0, 2]].mean(), negative[3, 1]]
    term = 2.0 * sum(per_sample) / 4
    torch.testing.assert_close(value, without + term)
    torch.testing.assert_close(stats["D_swap"], logits[valid].mean())
    off = make_loss(kind=kind, mismatch_weight=0.5, swap_weight=0.0)
    with torch.no_grad():
        value_off, stats_off = off.d_phase(fakes, real, c, c[mismatched(idx)], do_r1=False,
                                           swapped=(c_swap, valid))
    assert "D_swap" not in stats_off and torch.allclose(value_off, without)


def test_g_phase_swap_term_pushes_fakes_away_from_swapped_captions():
    loss = make_loss(swap_weight_g=0.5)
    z, c, real, idx = batch()
    c_swap = torch.randn(4, 2, C_DIM)
    valid = torch.tensor([[True, True], [True, False], [False, False], [True, True]])
    fakes = loss.generate(z, c)
    plain, _ = loss.g_phase(fakes, c)
    value, stats = loss.g_phase(fakes, c, swapped=(c_swap, valid))
    with torch.no_grad():
        phi = loss.D.features(fakes)
        logits = torch.stack([loss.D.score(phi, c_swap[:, k]) for k in range(2)], dim=1)
    sp = torch.nn.functional.softplus(logits)
    term = 0.5 * (sp[0].mean() + sp[1, 0] + 0.0 + sp[3].mean()) / 4
    torch.testing.assert_close(value, plain + term)
    torch.testing.assert_close(stats["G_swap"], logits[valid].mean())
    (value - plain).backward()  # the swap term alone
    assert all(p.grad is None for p in loss.D.parameters())  # G phase: D is frozen
    assert sum(p.grad.abs().sum() for p in loss.G.parameters() if p.grad is not None) > 0


def test_d_phase_does_not_backprop_into_g():
    loss = make_loss()
    z, c, real, idx = batch()
    fakes = loss.generate(z, c)
    value, _ = loss.d_phase(fakes, real, c, c[mismatched(idx)], do_r1=False)
    value.backward()
    assert all(p.grad is None for p in loss.G.parameters())
    assert all(p.grad is not None for p in loss.D.parameters())


# ----------------------------------------------------------------------------- closed forms


REAL = torch.tensor([1.5, -0.5, 0.2])
FAKE = torch.tensor([0.3, -2.0, 1.0])
MIS = torch.tensor([0.2, 1.0, -3.0])


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def _mean(values) -> float:
    return sum(values) / len(values)


def test_d_loss_nonsaturating_closed_form():
    loss = make_loss(kind="nonsaturating", mismatch_weight=0.5)
    expected = (_mean([_softplus(-r) for r in REAL.tolist()])
                + _mean([_softplus(f) for f in FAKE.tolist()]))
    mis = 0.5 * _mean([_softplus(m) for m in MIS.tolist()])
    assert loss._d_loss(REAL, FAKE, None).item() == pytest.approx(expected, rel=1e-6)
    assert loss._d_loss(REAL, FAKE, MIS).item() == pytest.approx(expected + mis, rel=1e-6)


def test_d_loss_hinge_closed_form():
    loss = make_loss(kind="hinge", mismatch_weight=0.5)
    # relu(1 - real): [0, 1.5, 0.8]; relu(1 + fake): [1.3, 0, 2]; relu(1 + mis): [1.2, 2, 0]
    expected = (0 + 1.5 + 0.8) / 3 + (1.3 + 0 + 2.0) / 3
    assert loss._d_loss(REAL, FAKE, None).item() == pytest.approx(expected, rel=1e-6)
    assert loss._d_loss(REAL, FAKE, MIS).item() == pytest.approx(
        expected + 0.5 * (1.2 + 2.0 + 0) / 3, rel=1e-6)
    ns = make_loss(kind="nonsaturating", mismatch_weight=0.5)
    assert abs(ns._d_loss(REAL, FAKE, MIS).item() - loss._d_loss(REAL, FAKE, MIS).item()) > 0.1


class _FirstPixelD(nn.Module):
    """A stand-in D whose logit is the first pixel of each image."""

    projection = False

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones([]))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return x[:, 0, 0, 0] * self.scale


@pytest.mark.parametrize("kind", ["nonsaturating", "hinge"])
def test_g_loss_closed_form(kind):
    G, _ = make_nets()
    loss = GANLoss(G, _FirstPixelD(), DiffAugment(""), LossSettings(kind=kind))
    fakes = torch.zeros(3, 3, RES, RES)
    fakes[:, 0, 0, 0] = FAKE
    value, stats = loss.g_phase(fakes, torch.zeros(3, C_DIM))
    if kind == "hinge":
        expected = -FAKE.mean().item()
    else:
        expected = _mean([_softplus(-f) for f in FAKE.tolist()])
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert stats["loss_G"].item() == pytest.approx(expected, rel=1e-6)


def test_unknown_loss_kind_raises():
    G, D = make_nets()
    with pytest.raises(ValueError, match="wasserstein"):
        GANLoss(G, D, DiffAugment(""), LossSettings(kind="wasserstein"))


# ----------------------------------------------------------------------------- one iteration


def test_one_full_iteration_reaches_g_and_d():
    loss = make_loss("color,translation,cutout", r1_interval=2, style_mixing=0.5)
    G, D = loss.G, loss.D
    z, c, real, idx = batch()
    w_avg = G.mapping.w_avg.clone()

    fakes = loss.generate(z, c)
    assert fakes.shape == real.shape and fakes.requires_grad
    assert (G.mapping.w_avg - w_avg).abs().max() > 0  # generate tracks the mean w
    d_loss, d_stats = loss.d_phase(fakes, real, c, c[mismatched(idx)], do_r1=True)
    d_loss.backward()
    for name, p in D.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert torch.isfinite(d_stats["r1_penalty"])
    with torch.no_grad():  # an SGD step, so that g_phase sees an updated D
        for p in D.parameters():
            p -= 0.01 * p.grad
    D.zero_grad(set_to_none=True)

    g_loss, g_stats = loss.g_phase(fakes, c)
    g_loss.backward()
    assert torch.isfinite(g_stats["loss_G"])
    assert all(not p.requires_grad and p.grad is None for p in D.parameters())
    for name, p in G.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert G.mapping.layers[0].weight.grad.abs().sum() > 0

    # The next d_phase switches D's gradients back on.
    loss.d_phase(fakes, real, c, c[mismatched(idx)], do_r1=False)
    assert all(p.requires_grad for p in D.parameters())
