"""Tests of the generator, the projection discriminator and the caption modules (tiny, CPU)."""

from __future__ import annotations

import pytest
import torch

from gan_t2i.networks import Discriminator, Generator
from gan_t2i.networks.generator import SynthesisLayer, ToRGB
from gan_t2i.networks.text import CrossAttention, TextEmbed

C_DIM = 16
TINY = {"channel_base": 256, "channel_max": 32}
G_KW = {"c_dim": C_DIM, "z_dim": 8, "w_dim": 16, "t_dim": 16, **TINY}


def make_g(resolution: int = 16, seed: int = 0, **kw) -> Generator:
    torch.manual_seed(seed)
    return Generator(resolution=resolution, **{**G_KW, **kw})


def make_d(resolution: int = 16, seed: int = 0, **kw) -> Discriminator:
    torch.manual_seed(seed)
    return Discriminator(c_dim=C_DIM, resolution=resolution, **{**TINY, **kw})


def inputs(batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 8, generator=gen), torch.randn(batch, C_DIM, generator=gen)


def assert_differ(a: torch.Tensor, b: torch.Tensor, min_diff: float = 1e-4) -> None:
    assert (a - b).abs().max().item() > min_diff


# ----------------------------------------------------------------------------- generator


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_generator_output_shape(resolution):
    G = make_g(resolution)
    z, c = inputs(2)
    with torch.no_grad():
        img = G(z, c)
    assert img.shape == (2, 3, resolution, resolution)
    assert torch.isfinite(img).all()


@pytest.mark.parametrize("resolution", [8, 32, 128])
def test_num_ws_is_what_synthesis_accepts(resolution):
    G = make_g(resolution)
    blocks = len(G.blocks)
    # 4x4: conv + ToRGB; every other block: 2 convs + ToRGB whose w the next block's first
    # conv shares, i.e. 2 + 2 * (blocks - 1) ws.
    assert G.num_ws == 2 * blocks
    _, c = inputs(2)
    with torch.no_grad():
        img = G.synthesis(torch.randn(2, G.num_ws, G.w_dim), c)
        assert img.shape == (2, 3, resolution, resolution)
        for wrong in (G.num_ws - 1, G.num_ws + 1):
            with pytest.raises(AssertionError):
                G.synthesis(torch.randn(2, wrong, G.w_dim), c)


def test_synthesis_uses_every_w():
    """Each of the num_ws style vectors reaches the image (none is silently ignored)."""
    G = make_g(16)
    _, c = inputs(2)
    ws = torch.randn(2, G.num_ws, G.w_dim)
    with torch.no_grad():
        base = G.synthesis(ws, c, noise_mode="const")
        for i in range(G.num_ws):
            ws2 = ws.clone()
            ws2[:, i] += 1.0
            assert_differ(G.synthesis(ws2, c, noise_mode="const"), base)


@pytest.mark.parametrize("resolution", [4, 12, 2048])
def test_invalid_resolution_raises(resolution):
    with pytest.raises(ValueError, match="power of two"):
        Generator(c_dim=C_DIM, resolution=resolution, **TINY)
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(c_dim=C_DIM, resolution=resolution, **TINY)


def test_same_inputs_give_identical_output_with_const_noise():
    G = make_g()
    z, c = inputs()
    with torch.no_grad():
        for layer in G.modules():  # make the noise path matter
            if isinstance(layer, SynthesisLayer):
                layer.noise_strength.fill_(0.5)
        torch.manual_seed(10)
        a = G(z, c, noise_mode="const")
        torch.manual_seed(11)
        b = G(z, c, noise_mode="const")
        torch.manual_seed(10)
        r1 = G(z, c, noise_mode="random")
        torch.manual_seed(11)
        r2 = G(z, c, noise_mode="random")
    assert torch.equal(a, b)
    assert_differ(r1, r2)  # random noise really is random once its strength is non-zero


def test_different_captions_give_different_images():
    G = make_g()
    z, c = inputs()
    c2 = torch.randn_like(c)
    with torch.no_grad():
        a = G(z, c, noise_mode="const")
        b = G(z, c2, noise_mode="const")
    for i in range(z.shape[0]):
        assert_differ(a[i], b[i])


def test_truncation_psi0_maps_every_z_to_w_avg():
    G = make_g()
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    z = torch.randn(4, 8)
    c = torch.randn(1, C_DIM).expand(4, -1)
    with torch.no_grad():
        w = G.map(z, c, psi=0.0)
        torch.testing.assert_close(w, G.mapping.w_avg.expand(4, -1))
        img = G(z, c, psi=0.0, noise_mode="const")
        free = G(z, c, noise_mode="const")
    for i in range(1, 4):
        torch.testing.assert_close(img[i], img[0])
        assert_differ(free[i], free[0])  # without truncation z matters


def test_truncation_psi_interpolates_toward_w_center():
    G = make_g()
    z, c = inputs(3)
    center = torch.randn(3, G.w_dim)
    with torch.no_grad():
        w = G.map(z, c)
        torch.testing.assert_close(G.map(z, c, psi=0.0, w_center=center), center)
        torch.testing.assert_close(G.map(z, c, psi=0.5, w_center=center), 0.5 * (w + center))
        torch.testing.assert_close(G.map(z, c, psi=1.0, w_center=center), w)


def test_caption_mean_w_is_the_mean_w_of_each_caption():
    G = make_g()
    _, c = inputs(2)
    centers = G.caption_mean_w(c, num_samples=64, seed=3)
    assert centers.shape == (2, G.w_dim)
    z = torch.randn(64, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for i in range(2):
            expected = G.map(z, c[i].expand(64, -1)).mean(0)
            torch.testing.assert_close(centers[i], expected)
    assert_differ(centers[0], centers[1])  # one centre per caption
    torch.testing.assert_close(G.caption_mean_w(c, num_samples=64, seed=3), centers)


def test_truncation_toward_caption_mean_w_removes_z():
    G = make_g()
    caption = torch.randn(1, C_DIM)
    center = G.caption_mean_w(caption, num_samples=32)  # [1, w_dim]
    z = torch.randn(4, 8)
    c = caption.expand(4, -1)
    with torch.no_grad():
        img = G(z, c, psi=0.0, w_center=center, noise_mode="const")
        w_avg_img = G(z, c, psi=0.0, noise_mode="const")
    for i in range(1, 4):
        torch.testing.assert_close(img[i], img[0])
    assert_differ(img[0], w_avg_img[0])  # the caption centre is not the global w_avg


def test_update_w_avg_moves_w_avg_by_its_beta():
    G = make_g()
    z, c = inputs(4)
    before = G.mapping.w_avg.clone()
    with torch.no_grad():
        G(z, c)
        torch.testing.assert_close(G.mapping.w_avg, before)  # off by default
        w = G.mapping(z, G.text_features(c))
        G(z, c, update_w_avg=True)
    beta = G.mapping.w_avg_beta
    assert_differ(G.mapping.w_avg, before, 1e-6)
    torch.testing.assert_close(G.mapping.w_avg, beta * before + (1 - beta) * w.mean(0))


def test_style_mixing_changes_the_output():
    G = make_g()
    z, c = inputs(4)
    with torch.no_grad():
        torch.manual_seed(5)
        plain = G(z, c, noise_mode="const", style_mixing=0.0)
        torch.manual_seed(5)
        mixed = G(z, c, noise_mode="const", style_mixing=1.0)
        torch.manual_seed(6)
        plain_again = G(z, c, noise_mode="const", style_mixing=0.0)
    torch.testing.assert_close(plain, plain_again)
    for i in range(4):
        assert_differ(mixed[i], plain[i])


def test_mix_styles_switches_to_the_second_w_from_a_cutoff():
    G = make_g()
    z, c = inputs(6)
    ws = torch.randn(6, G.num_ws, G.w_dim)
    torch.manual_seed(0)
    with torch.no_grad():
        out = G._mix_styles(ws, z, c, prob=1.0)
    for i in range(6):
        changed = (out[i] != ws[i]).any(dim=1)  # [num_ws]
        cutoff = int(changed.float().argmax())
        assert 1 <= cutoff < G.num_ws
        assert not changed[:cutoff].any() and changed[cutoff:].all()
        torch.testing.assert_close(out[i, cutoff:], out[i, cutoff].expand(G.num_ws - cutoff, -1))
    with torch.no_grad():
        torch.testing.assert_close(G._mix_styles(ws, z, c, prob=0.0), ws)


def test_caption_reaches_every_layer_style():
    G = make_g()
    _, c = inputs(2)
    c2 = torch.randn_like(c)
    ws = torch.randn(2, G.num_ws, G.w_dim)
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, module in G.named_modules():
        if isinstance(module, (SynthesisLayer, ToRGB)):
            hooks.append(module.affine.register_forward_hook(
                lambda m, args, out, name=name: seen.setdefault(name, []).append(args[0])))
    with torch.no_grad():
        a = G.synthesis(ws, c, noise_mode="const")
        b = G.synthesis(ws, c2, noise_mode="const")
    for h in hooks:
        h.remove()
    assert len(seen) == G.num_ws + len(G.blocks) - 1  # every conv and every ToRGB
    for name, (style_a, style_b) in seen.items():
        w_part = slice(0, G.w_dim)
        t_part = slice(G.w_dim, None)
        assert torch.equal(style_a[:, w_part], style_b[:, w_part]), name
        assert_differ(style_a[:, t_part], style_b[:, t_part])
    assert_differ(a, b)


def test_caption_changes_image_even_when_mapping_ignores_it(monkeypatch):
    G = make_g()
    z, c = inputs(2)
    c2 = torch.randn_like(c)
    original = G.mapping.forward
    monkeypatch.setattr(G.mapping, "forward",
                        lambda z, t, **kw: original(z, torch.zeros_like(t), **kw))
    with torch.no_grad():
        torch.testing.assert_close(G.map(z, c), G.map(z, c2))  # w no longer sees the caption
        a = G(z, c, noise_mode="const")
        b = G(z, c2, noise_mode="const")
    for i in range(2):
        assert_differ(a[i], b[i])


def test_grouped_modconv_gives_the_same_image():
    dense = make_g(32)
    with torch.no_grad():
        for layer in dense.modules():
            if isinstance(layer, SynthesisLayer):
                layer.noise_strength.fill_(0.3)
    grouped = make_g(32, seed=123, grouped_modconv=True)
    grouped.load_state_dict(dense.state_dict())
    z, c = inputs(3)
    a = dense(z, c, noise_mode="const")
    b = grouped(z, c, noise_mode="const")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p_dense), p_grouped in zip(dense.named_parameters(), grouped.parameters()):
        torch.testing.assert_close(p_dense.grad, p_grouped.grad, rtol=1e-3, atol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _tokens(batch: int, seed: int, length: int = 5, dim: int = 12):
    gen = torch.Generator().manual_seed(seed)
    tok = torch.randn(batch, length, dim, generator=gen)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 3:] = False  # a padded caption
    return tok, mask


def test_cross_attention_starts_as_identity():
    G = make_g(16, attention_resolutions=(8,), token_dim=12)
    attn = [m for m in G.modules() if isinstance(m, CrossAttention)]
    assert len(attn) == 1 and G.blocks[1].attention is attn[0]
    plain = make_g(16)
    missing, unexpected = plain.load_state_dict(G.state_dict(), strict=False)
    assert not missing and unexpected and all(".attention." in k for k in unexpected)
    z, c = inputs(2)
    tokens = _tokens(2, seed=2)
    out = G(z, c, noise_mode="const", tokens=tokens)
    assert out.shape == (2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(out, G(z, c, noise_mode="const"))
        torch.testing.assert_close(out, plain(z, c, noise_mode="const"))
    out.square().sum().backward()
    assert attn[0].gain.grad is not None and attn[0].gain.grad.abs() > 0  # training can open it


def test_cross_attention_with_gain_depends_on_tokens_but_not_padding():
    G = make_g(16, attention_resolutions=(8,), token_dim=12)
    with torch.no_grad():
        G.blocks[1].attention.gain.fill_(1.0)
    z, c = inputs(2)
    tok, mask = _tokens(2, seed=2)
    with torch.no_grad():
        base = G(z, c, noise_mode="const", tokens=(tok, mask))
        other = G(z, c, noise_mode="const", tokens=_tokens(2, seed=3))
        padded = tok.clone()
        padded[0, 3:] = 100.0  # masked-out tokens must be ignored
        same = G(z, c, noise_mode="const", tokens=(padded, mask))
        no_attn = G(z, c, noise_mode="const")
    for i in range(2):
        assert_differ(base[i], other[i])
    assert_differ(base, no_attn)
    torch.testing.assert_close(same, base)


def test_cross_attention_ignores_a_fully_masked_caption():
    torch.manual_seed(0)
    attn = CrossAttention(8, 4, heads=2)
    with torch.no_grad():
        attn.gain.fill_(1.0)
    x = torch.randn(2, 8, 3, 3)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False  # nothing to attend to: the residual adds zero, not NaN
    with torch.no_grad():
        y = attn(x, torch.randn(2, 5, 4), mask)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[1], x[1])
    assert_differ(y[0], x[0])


def test_cross_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        CrossAttention(6, 4, heads=4)


# ----------------------------------------------------------------------------- discriminator


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_discriminator_logits_shape(resolution):
    D = make_d(resolution)
    x = torch.randn(4, 3, resolution, resolution)
    with torch.no_grad():
        logits = D(x, torch.randn(4, C_DIM))
    assert logits.shape == (4,)
    assert torch.isfinite(logits).all()
    with pytest.raises(AssertionError):
        D(torch.randn(4, 3, resolution // 2, resolution // 2), torch.randn(4, C_DIM))


def test_discriminator_projection_makes_the_caption_matter():
    D = make_d()
    x = torch.randn(4, 3, 16, 16)
    c = torch.randn(4, C_DIM)
    with torch.no_grad():
        a, b = D(x, c), D(x, torch.randn_like(c))
        phi = D.features(x)
        unconditional = D(x, None)
    for i in range(4):
        assert_differ(a[i], b[i])
    cmap = D.text_embed(c)
    expected = D.out(phi).squeeze(1) + (D.feature_proj(phi) * cmap).sum(1) / D.cmap_dim**0.5
    torch.testing.assert_close(a, expected.detach())
    torch.testing.assert_close(unconditional, D.out(phi).squeeze(1).detach())


def test_discriminator_without_projection_ignores_the_caption():
    D = make_d(projection=False)
    assert D.text_embed is None and D.feature_proj is None
    x = torch.randn(4, 3, 16, 16)
    c = torch.randn(4, C_DIM)
    with torch.no_grad():
        a = D(x, c)
        torch.testing.assert_close(D(x, torch.randn_like(c)), a)
        torch.testing.assert_close(D(x, None), a)


def test_discriminator_gradients_reach_the_caption_path():
    D = make_d()
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    c = torch.randn(4, C_DIM)
    D(x, c).sum().backward()
    for name, p in [*D.text_embed.named_parameters(), *D.feature_proj.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in D.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_discriminator_mbstd_couples_the_batch():
    D = make_d()
    x = torch.randn(4, 3, 16, 16)
    c = torch.randn(4, C_DIM)
    x2 = x.clone()
    x2[3] = torch.randn(3, 16, 16)
    with torch.no_grad():
        a, b = D(x, c), D(x2, c)
    assert_differ(a[0], b[0], 1e-6)  # sample 0 shares a group with sample 3
    no_mbstd = make_d(mbstd_group=1)
    with torch.no_grad():
        torch.testing.assert_close(no_mbstd(x, c)[:3], no_mbstd(x2, c)[:3])


# ----------------------------------------------------------------------------- text modules


def test_text_embed_centring_changes_the_normalized_embedding():
    embed = TextEmbed(C_DIM, 8)
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(C_DIM, generator=gen)
    c = mean + 0.2 * torch.randn(6, C_DIM, generator=gen)  # captions close to a shared mean
    before = embed.normalized(c)
    embed.set_statistics(mean.numpy())  # plain arrays are accepted
    torch.testing.assert_close(embed.mean, mean)
    after = embed.normalized(c)
    assert_differ(before, after)
    for v in (before, after):
        torch.testing.assert_close(v.square().mean(dim=1), torch.ones(6))
    torch.testing.assert_close(after, (c - mean) / (c - mean).square().mean(1, keepdim=True).sqrt())
    # Centring spreads the captions apart: their mean pairwise cosine drops.
    def mean_cos(v):
        v = v / v.norm(dim=1, keepdim=True)
        return (v @ v.t()).triu(1).sum() / 15
    assert mean_cos(before) > 0.9 and mean_cos(after) < 0.5
    assert "mean" in embed.state_dict()  # the statistics travel with checkpoints


def test_generator_text_statistics_change_the_output():
    G = make_g()
    z, c = inputs(2)
    with torch.no_grad():
        a = G(z, c, noise_mode="const")
        G.text_embed.set_statistics(torch.randn(C_DIM))
        b = G(z, c, noise_mode="const")
    assert_differ(a, b)
