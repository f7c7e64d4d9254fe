"""CLIP score and CLIP R-precision: the real loading code on a tiny CLIP (conftest.tiny_clip_dir)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gan_t2i.metrics import MetricUnavailable
from gan_t2i.metrics.clip import clip_r_precision, clip_score, load_clip


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 24, 24, 3), dtype=np.uint8)


def test_tiny_clip_loads_and_scores(tiny_clip_dir):
    scorer = load_clip(str(tiny_clip_dir))
    images = _images(6)
    captions = [f"a red circle number {i}" for i in range(6)]
    img, txt = scorer.image_embeddings(images), scorer.text_embeddings(captions)
    assert img.shape == (6, 16) and txt.shape == (6, 16)
    assert torch.allclose(img.norm(dim=-1), torch.ones(6), atol=1e-5)
    result = clip_score(scorer, images, captions, num_bootstrap=100)
    expected = (100 * (img * txt).sum(-1).clamp(min=0)).mean().item()
    assert result["value"] == pytest.approx(expected, rel=1e-6)
    assert result["ci_low"] <= result["value"] <= result["ci_high"]
    # float images in [-1, 1] give the same embeddings as their uint8 form
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.allclose(scorer.image_embeddings(as_float), img, atol=1e-4)


def test_missing_clip_is_one_line_metric_unavailable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MetricUnavailable) as info:
        load_clip("nobody/no-such-clip-model")
    message = str(info.value)
    assert "\n" not in message and "eval.clip_model" in message and "nobody/no-such-clip" in message


class _ColourScorer:
    """A perfect scorer for the R-precision arithmetic: image i matches text 'caption i' only."""

    name = "fake"

    def image_embeddings(self, images):
        return torch.eye(len(images), 8)

    def text_embeddings(self, texts):
        return torch.stack([torch.eye(8)[int(t.split()[-1]) % 8] for t in texts])


def test_clip_r_precision_is_one_for_a_perfect_scorer_and_chance_when_blind():
    captions = [f"caption {i}" for i in range(8)]
    perfect = clip_r_precision(_ColourScorer(), _images(8), captions, caption_pool=captions,
                               num_mismatched=5, num_bootstrap=50)
    assert perfect["value"] == 1.0 and perfect["chance"] == pytest.approx(1 / 6)

    class Blind(_ColourScorer):
        def text_embeddings(self, texts):
            return torch.ones(len(texts), 8) / 8 ** 0.5

    blind = clip_r_precision(Blind(), _images(8), captions, caption_pool=captions, num_mismatched=5,
                             num_bootstrap=50)
    assert blind["value"] == pytest.approx(1 / 6)  # all tied: expected hit 1 / (1 + 5)
