"""Distances between feature distributions: FID, KID, and precision/recall.

Every function takes features [N, F] (NumPy or torch) from one extractor; which extractor
(Inception, the shapes oracle, a random CNN) is the caller's choice.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg

from gan_t2i.utils import GanT2IError

FeatureArray = np.ndarray | torch.Tensor


def _as_float64(features: FeatureArray, name: str = "features") -> np.ndarray:
    """Features as a float64 NumPy matrix [N, F]."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise GanT2IError(f"{name} must be a matrix [N, F], got shape {x.shape}")
    return x


def feature_stats(features: FeatureArray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and covariance [F, F] of features [N, F] (float64)."""
    x = _as_float64(features)
    if x.shape[0] < 2:
        raise GanT2IError(f"feature statistics need at least 2 feature vectors, got {x.shape[0]}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrtm_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> np.ndarray:
    """sqrt(sigma1 @ sigma2); retried with `eps` on the diagonals when singular or complex."""
    with warnings.catch_warnings():
        # A singular product (fewer samples than dimensions) is expected; handled just below.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all() or _large_imaginary(covmean):
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if not np.isfinite(covmean).all():
        raise GanT2IError("Fréchet distance: the covariance product has no finite square root")
    if _large_imaginary(covmean):
        worst = float(np.max(np.abs(covmean.imag)))
        raise GanT2IError(f"Fréchet distance: square root has an imaginary part of {worst:.3g}")
    return np.real(covmean)


def _large_imaginary(matrix: np.ndarray) -> bool:
    return np.iscomplexobj(matrix) and not np.allclose(np.diagonal(matrix).imag, 0, atol=1e-3)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     *, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)) between two Gaussians."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise GanT2IError(f"Fréchet distance: mismatched statistics, means {mu1.shape} and "
                          f"{mu2.shape}, covariances {sigma1.shape} and {sigma2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm_product(sigma1, sigma2, eps)
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(value)


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel k(a, b) = (a.b / F + 1)^3 between equal-sized sets."""
    m, dim = x.shape
    k_xx = (x @ x.T / dim + 1) ** 3
    k_yy = (y @ y.T / dim + 1) ** 3
    k_xy = (x @ y.T / dim + 1) ** 3
    same = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(same - 2.0 * k_xy.sum() / (m * m))


def kid(features_a: FeatureArray, features_b: FeatureArray, *, num_subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std of unbiased MMD^2 over random subsets."""
    a, b = _as_float64(features_a, "features_a"), _as_float64(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise GanT2IError(f"KID: feature sizes differ ({a.shape[1]} and {b.shape[1]})")
    if subset_size < 2 or min(len(a), len(b)) < subset_size:
        raise GanT2IError(f"KID needs at least subset_size={subset_size} (>= 2) feature vectors "
                          f"per set, got {len(a)} and {len(b)}: lower the subset size or add images")
    rng = np.random.default_rng(seed)
    values = [
        _polynomial_mmd2(a[rng.choice(len(a), subset_size, replace=False)],
                         b[rng.choice(len(b), subset_size, replace=False)])
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def _as_float32(features: FeatureArray, name: str) -> torch.Tensor:
    return torch.as_tensor(_as_float64(features, name), dtype=torch.float32)


def _knn_radii(features: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Distance from each vector to its k-th nearest neighbour in the same set [N]."""
    radii = []
    for start in range(0, len(features), batch_size):
        dist = torch.cdist(features[start:start + batch_size], features)  # [b, N]
        radii.append(dist.kthvalue(k + 1, dim=1).values)  # k + 1: each vector is its own 0th
    return torch.cat(radii)


def _inside_fraction(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor,
                     batch_size: int) -> float:
    """Share of `queries` inside at least one ball (manifold[j], radii[j])."""
    inside = []
    for start in range(0, len(queries), batch_size):
        dist = torch.cdist(queries[start:start + batch_size], manifold)  # [b, N]
        inside.append((dist <= radii.unsqueeze(0)).any(dim=1))
    return float(torch.cat(inside).float().mean())


def precision_recall(real: FeatureArray, fake: FeatureArray, *, k: int = 3,
                     batch_size: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) from k-NN balls."""
    r, f = _as_float32(real, "real"), _as_float32(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise GanT2IError(f"precision/recall: feature sizes differ ({r.shape[1]} and {f.shape[1]})")
    if min(len(r), len(f)) <= k:
        raise GanT2IError(f"precision/recall with k={k} needs more than {k} feature vectors "
                          f"per set, got {len(r)} real and {len(f)} fake")
    precision = _inside_fraction(r, _knn_radii(r, k, batch_size), f, batch_size)
    recall = _inside_fraction(f, _knn_radii(f, k, batch_size), r, batch_size)
    return precision, recall
