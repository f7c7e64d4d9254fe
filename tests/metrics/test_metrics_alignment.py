"""Tests of caption alignment scoring, R-precision and bootstrap intervals (stub oracle)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gan_t2i.data.shapes import ATTRIBUTES, make_captions, sample_attributes
from gan_t2i.metrics.alignment import (
    bootstrap_ci,
    chance_levels,
    oracle_caption_score,
    r_precision_hits,
    shapes_alignment,
    shapes_r_precision,
)
from gan_t2i.metrics.oracle import encode_attributes
from gan_t2i.utils import GanT2IError


class StubOracle:
    """Reads the attributes it was told, whatever the pixels (confidence 0.9, or uniform)."""

    def __init__(self, truth: list[dict[str, str]], *, uniform: bool = False):
        self.codes = encode_attributes(truth)
        self.uniform = uniform

    def predict(self, images: np.ndarray) -> dict[str, torch.Tensor]:
        return {a: c[: len(images)] for a, c in self.codes.items()}

    def log_probs(self, images: np.ndarray) -> dict[str, torch.Tensor]:
        out = {}
        for attr, values in ATTRIBUTES.items():
            p = torch.full((len(images), len(values)), 1.0 / len(values))
            if not self.uniform:
                p = torch.full_like(p, 0.1 / (len(values) - 1))
                p[torch.arange(len(images)), self.codes[attr][: len(images)]] = 0.9
            out[attr] = p.log()
        return out


def _scenes(n: int, seed: int = 0) -> tuple[list[dict[str, str]], list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    attrs = [sample_attributes(rng, "train", []) for _ in range(n)]
    captions = [make_captions(a, rng, 1)[0] for a in attrs]
    return attrs, captions, np.zeros((n, 8, 8, 3), np.uint8)


def test_chance_levels():
    chance = chance_levels()
    assert chance["shape"] == 0.25 and chance["size"] == 0.5 and chance["position"] == 0.2
    assert chance["all"] == pytest.approx(1 / (4 * 6 * 2 * 5))


def test_alignment_is_perfect_for_matching_captions_and_drops_for_shuffled_ones():
    attrs, captions, images = _scenes(300)
    result = shapes_alignment(StubOracle(attrs), images, captions, num_bootstrap=200)
    assert set(result) == {*ATTRIBUTES, "all"}
    assert all(r["value"] == 1.0 and r["num"] == 300 for r in result.values())
    shuffled = captions[1:] + captions[:1]
    worse = shapes_alignment(StubOracle(attrs), images, shuffled, num_bootstrap=200)
    assert worse["all"]["value"] < 0.1
    assert worse["color"]["ci_low"] <= worse["color"]["value"] <= worse["color"]["ci_high"]
    assert worse["color"]["value"] == pytest.approx(1 / 6, abs=0.1)


def test_alignment_skips_attributes_a_caption_does_not_name():
    attrs = [{"shape": "circle", "color": "red", "size": "small", "position": "center"}] * 2
    captions = ["a small red circle in the center", "something red"]
    result = shapes_alignment(StubOracle(attrs), np.zeros((2, 8, 8, 3), np.uint8), captions,
                              num_bootstrap=50)
    assert result["color"]["num"] == 2 and result["shape"]["num"] == 1
    assert result["all"]["value"] == 1.0 and result["all"]["num"] == 2


def test_alignment_rejects_bad_inputs():
    attrs, captions, images = _scenes(4)
    with pytest.raises(GanT2IError, match="4 images but 3 captions"):
        shapes_alignment(StubOracle(attrs), images, captions[:3])
    with pytest.raises(GanT2IError, match="names a shapes attribute"):
        shapes_alignment(StubOracle(attrs), images, ["hello"] * 4)


def test_caption_score_prefers_the_true_caption():
    attrs, captions, images = _scenes(50)
    oracle = StubOracle(attrs)
    true = oracle_caption_score(oracle, images, captions)
    assert true == pytest.approx(torch.full((50,), 4 * math.log(0.9), dtype=torch.float64))
    other = oracle_caption_score(oracle, images, captions[1:] + captions[:1])
    assert (other <= true).all() and (other < true).float().mean() > 0.9


def test_r_precision_hits_share_ties():
    hits = r_precision_hits(torch.tensor([1.0, 1.0, 1.0]),
                            torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]))
    assert hits.tolist() == [1.0, 0.5, 0.0]


def test_shapes_r_precision_perfect_and_blind_oracles():
    attrs, captions, images = _scenes(200)
    perfect = shapes_r_precision(StubOracle(attrs), images, captions, num_bootstrap=100)
    assert perfect["value"] == 1.0 and perfect["chance"] == 0.01
    blind = shapes_r_precision(StubOracle(attrs, uniform=True), images, captions, num_bootstrap=100)
    assert blind["value"] == pytest.approx(0.01)  # all 100 candidates tie


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    small, large = rng.random(50) < 0.7, rng.random(5000) < 0.7
    lo_s, hi_s = bootstrap_ci(small, num=500)
    lo_l, hi_l = bootstrap_ci(large, num=500)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < 0.3 * (hi_s - lo_s)
    assert bootstrap_ci(small, num=500) == (lo_s, hi_s)  # seeded
    with pytest.raises(GanT2IError):
        bootstrap_ci([float("nan")])
