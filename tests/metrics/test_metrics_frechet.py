"""Tests of the feature distances: Fréchet distance, KID, precision/recall."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gan_t2i.metrics.frechet import feature_stats, frechet_distance, kid, precision_recall
from gan_t2i.utils import GanT2IError


def _gaussian(n: int, dim: int, *, mean: float = 0.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, 1.0, size=(n, dim))


def test_frechet_of_a_set_with_itself_is_zero():
    mu, sigma = feature_stats(_gaussian(500, 16))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_frechet_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-8)


def test_frechet_handles_singular_covariances_and_torch_features():
    x = torch.from_numpy(_gaussian(10, 32)).float()  # 10 samples in 32 dims: rank-deficient
    mu1, s1 = feature_stats(x)
    mu2, s2 = feature_stats(x + 1.0)
    value = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(value) and value == pytest.approx(32.0, rel=1e-3)  # only the mean moved


def test_frechet_rejects_mismatched_statistics():
    mu, sigma = feature_stats(_gaussian(50, 4))
    with pytest.raises(GanT2IError, match="mismatched"):
        frechet_distance(mu, sigma, mu[:3], sigma[:3, :3])


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    a, b = _gaussian(400, 16, seed=0), _gaussian(400, 16, seed=1)
    same, _ = kid(a, b, num_subsets=20, subset_size=200)
    shifted, std = kid(a, _gaussian(400, 16, mean=0.5, seed=2), num_subsets=20, subset_size=200)
    assert abs(same) < 0.01
    assert shifted > 0.05 and shifted > 10 * abs(same) and std >= 0


def test_kid_with_too_few_features_names_the_numbers():
    with pytest.raises(GanT2IError, match=r"subset_size=1000.*got 50 and 400"):
        kid(_gaussian(50, 4), _gaussian(400, 4))


def test_precision_recall_of_identical_sets_is_one():
    x = _gaussian(300, 8)
    assert precision_recall(x, x.copy(), k=3) == pytest.approx((1.0, 1.0))


def test_precision_recall_of_far_apart_sets_is_zero():
    assert precision_recall(_gaussian(200, 8), _gaussian(200, 8, mean=100.0, seed=1)) == (0.0, 0.0)


def test_precision_recall_when_fakes_cover_half_the_modes():
    rng = np.random.default_rng(0)
    centers = np.array([[50.0, 0.0], [0.0, 50.0], [-50.0, 0.0], [0.0, -50.0]])  # four modes
    real = np.concatenate([c + rng.normal(size=(100, 2)) for c in centers])
    fake = np.concatenate([c + rng.normal(size=(200, 2)) for c in centers[:2]])
    precision, recall = precision_recall(real, fake, k=3, batch_size=64)
    assert precision > 0.9
    assert recall == pytest.approx(0.5, abs=0.06)
