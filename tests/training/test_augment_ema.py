"""Tests of DiffAugment (identity, errors, geometry, gradients, determinism) and the EMA helpers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gan_t2i.training.augment import DiffAugment, color, cutout, translation
from gan_t2i.training.ema import ema_beta, requires_grad, update_ema

# ----------------------------------------------------------------------------- DiffAugment


@pytest.mark.parametrize("policy", ["", None, " , "])
def test_empty_policy_is_identity(policy):
    aug = DiffAugment(policy)
    x = torch.randn(2, 3, 8, 8)
    assert not aug.enabled
    assert aug(x) is x
    assert aug.state_dict() == {"policy": ""}


def test_unknown_policy_raises_naming_it():
    with pytest.raises(ValueError, match="'rotate'"):
        DiffAugment("color,rotate")
    aug = DiffAugment(" color , cutout ")
    assert aug.names == ["color", "cutout"] and aug.enabled
    assert aug.state_dict() == {"policy": "color,cutout"}
    assert DiffAugment(aug.state_dict()["policy"]).names == aug.names


def _one_bright_pixel(b: int, side: int, y: int, x: int) -> torch.Tensor:
    img = torch.zeros(b, 3, side, side)
    img[:, :, y, x] = torch.tensor([1.0, 2.0, 3.0])
    return img


def test_translation_moves_a_pixel_by_at_most_ratio_times_side():
    torch.manual_seed(0)
    side, ratio = 16, 0.125  # shifts of up to 2 pixels
    img = _one_bright_pixel(64, side, 7, 8)
    out = translation(img, ratio)
    assert out.shape == img.shape
    moves = set()
    for o in out:
        nonzero = o[0].nonzero()
        assert len(nonzero) == 1  # still exactly one lit pixel (the rest is zero padding)
        y, x = nonzero[0].tolist()
        assert abs(y - 7) <= 2 and abs(x - 8) <= 2
        torch.testing.assert_close(o[:, y, x], torch.tensor([1.0, 2.0, 3.0]))  # channels intact
        moves.add((y - 7, x - 8))
    assert len(moves) >= 10  # content really moves, in many ways (25 shifts possible) ...
    assert max(max(abs(dy), abs(dx)) for dy, dx in moves) == 2  # ... up to the limit


def test_translation_pads_with_zeros():
    torch.manual_seed(1)
    out = translation(torch.ones(64, 3, 16, 16), 0.125)
    zeros = (out == 0).all(dim=1)  # [B, H, W]
    for z in zeros:
        rows, cols = z.all(dim=1), z.all(dim=0)  # fully padded rows / columns
        assert rows.sum() <= 2 and cols.sum() <= 2
        assert z.sum() == 16 * rows.sum() + 16 * cols.sum() - rows.sum() * cols.sum()
    assert zeros.any()  # some image was shifted


def test_cutout_zeroes_a_square_of_the_expected_area():
    torch.manual_seed(0)
    side = 16
    out = cutout(torch.ones(200, 3, side, side), ratio=0.5)  # an 8x8 square = 25 %
    zeros = (out == 0)
    assert torch.equal(zeros.all(dim=1), zeros.any(dim=1))  # the same pixels in every channel
    counts = zeros[:, 0].sum(dim=[1, 2])
    assert (counts <= 64).all() and (counts >= 16).all()  # clipped at a corner: 4x4 at least
    assert (counts == 64).float().mean() > 0.2  # fully inside often enough
    for z in zeros[:, 0]:
        ys, xs = z.nonzero().unbind(1)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert z.sum() == h * w  # a filled rectangle: the square, clipped at the border
        assert h <= 8 and w <= 8
    assert abs(counts.float().mean().item() / side**2 - 0.25) < 0.08


def test_color_changes_values_and_is_differentiable():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 8, requires_grad=True)
    y = color(x)
    assert y.shape == x.shape
    assert (y - x).abs().max() > 1e-2
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("op", [color, translation, cutout])
def test_augmentation_gradients_match_finite_differences(op):
    def fixed_draws(x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(3)  # the same random augmentation on every call
        return op(x)

    x = torch.rand(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fixed_draws, (x,), eps=1e-6, atol=1e-6)


def test_full_policy_is_differentiable():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    DiffAugment("color,translation,cutout")(x).square().sum().backward()
    assert x.grad.abs().sum() > 0


def test_same_seed_gives_the_same_augmentation():
    x = torch.rand(4, 3, 16, 16)
    aug = DiffAugment("color,translation,cutout")
    torch.manual_seed(7)
    a = aug(x)
    state = torch.get_rng_state()  # what a checkpoint saves
    b_next = aug(x)
    torch.manual_seed(7)
    torch.testing.assert_close(aug(x), a, rtol=0, atol=0)
    torch.set_rng_state(state)
    torch.testing.assert_close(aug(x), b_next, rtol=0, atol=0)
    assert (a - b_next).abs().max() > 1e-3  # successive calls differ


# ----------------------------------------------------------------------------- EMA


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    with torch.no_grad():
        for p in model.parameters():  # BatchNorm's ones / zeros would be equal across models
            p.normal_()
    return model


def _pair() -> tuple[nn.Module, nn.Module]:
    model, ema = _model(0), _model(1)
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].num_batches_tracked.fill_(7)
    return model, ema


@pytest.mark.parametrize("beta", [0.0, 0.9, 1.0])
def test_update_ema_interpolates_parameters(beta):
    model, ema = _pair()
    before = copy.deepcopy(ema)
    update_ema(ema, model, beta)
    for p_ema, p_old, p in zip(ema.parameters(), before.parameters(), model.parameters()):
        if beta == 0.0:
            assert torch.equal(p_ema, p)
        elif beta == 1.0:
            assert torch.equal(p_ema, p_old)
        else:
            torch.testing.assert_close(p_ema, 0.9 * p_old + 0.1 * p, rtol=1e-6, atol=1e-7)
            assert not torch.equal(p_ema, p_old) and not torch.equal(p_ema, p)


def test_update_ema_copies_buffers_and_leaves_the_model_alone():
    model, ema = _pair()
    snapshot = copy.deepcopy(model.state_dict())
    update_ema(ema, model, 0.9)
    for (name, b_ema), b in zip(ema.named_buffers(), model.buffers()):
        assert torch.equal(b_ema, b), name
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshot[key]), key
    assert all(p.grad is None for p in ema.parameters())


def test_ema_beta_is_half_after_one_half_life():
    assert ema_beta(10_000, 10**9, half_life_kimg=10.0, rampup=None) == pytest.approx(0.5)
    assert ema_beta(10_000, 10**9, half_life_kimg=10.0, rampup=0.05) == pytest.approx(0.5)
    # Compounded over the steps that make up one half-life, the weight of the past halves.
    beta = ema_beta(32, 10**9, half_life_kimg=10.0, rampup=None)
    assert beta ** (10_000 / 32) == pytest.approx(0.5)


def test_ema_rampup_shortens_the_half_life_early():
    late = ema_beta(32, 10**9, half_life_kimg=10.0, rampup=0.05)
    early = ema_beta(32, 10_000, half_life_kimg=10.0, rampup=0.05)  # half-life 500 images
    assert early < late
    assert early == pytest.approx(0.5 ** (32 / 500))
    assert ema_beta(32, 0, half_life_kimg=10.0, rampup=0.05) == 0.0  # start: copy the model
    # Once cur_nimg * rampup passes the half-life, the ramp-up stops mattering.
    assert ema_beta(32, 200_000, half_life_kimg=10.0, rampup=0.05) == pytest.approx(late)
    assert ema_beta(32, 10_000, half_life_kimg=10.0, rampup=0.0) == pytest.approx(late)


def test_requires_grad_switches_every_parameter():
    model = _model(0)
    requires_grad(model, False)
    assert not any(p.requires_grad for p in model.parameters())
    requires_grad(model, True)
    assert all(p.requires_grad for p in model.parameters())
