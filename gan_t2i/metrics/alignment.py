"""Does a generated shapes image show what its caption says? Scored by the shapes oracle.

Every number comes with a 95% bootstrap interval and the chance level of a blind guess, so a
reader can tell a real gain from noise and from guessing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from gan_t2i.data.shapes import ATTRIBUTES, parse_caption
from gan_t2i.metrics.images import Images
from gan_t2i.metrics.oracle import ShapesOracle, attribute_hits, encode_attributes
from gan_t2i.utils import GanT2IError

_BOOTSTRAP_CHUNK = 2_000_000  # resampled values held in memory at once


def chance_levels() -> dict[str, float]:
    """Accuracy of a uniform guess: 1/len(values) per attribute, their product for "all"."""
    levels = {attr: 1.0 / len(values) for attr, values in ATTRIBUTES.items()}
    levels["all"] = math.prod(levels.values())
    return levels


def bootstrap_ci(per_sample_values: np.ndarray | list[float], *, num: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval (1 - alpha) of the mean; NaN entries are ignored."""
    x = np.asarray(per_sample_values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    if x.size == 0:
        raise GanT2IError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = np.empty(num)
    step = max(1, _BOOTSTRAP_CHUNK // x.size)
    for start in range(0, num, step):
        count = min(step, num - start)
        means[start:start + count] = x[rng.integers(0, x.size, size=(count, x.size))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def summarize(per_sample_values: np.ndarray, *, chance: float, num_bootstrap: int = 1000,
              seed: int = 0) -> dict[str, float]:
    """Mean, 95% interval, chance level and count of per-sample values (NaN = not scored)."""
    known = per_sample_values[~np.isnan(per_sample_values)]
    if known.size == 0:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                "chance": chance, "num": 0}
    low, high = bootstrap_ci(known, num=num_bootstrap, seed=seed)
    return {"value": float(known.mean()), "ci_low": low, "ci_high": high, "chance": chance,
            "num": int(known.size)}


def _parse_all(captions: list[str], num_images: int) -> list[dict[str, str | None]]:
    if len(captions) != num_images:
        raise GanT2IError(f"got {num_images} images but {len(captions)} captions")
    parsed = [parse_caption(c) for c in captions]
    if captions and all(v is None for p in parsed for v in p.values()):
        raise GanT2IError(f"none of the {len(captions)} captions names a shapes attribute")
    return parsed


def shapes_alignment(oracle: ShapesOracle, images: Images, captions: list[str], *,
                     num_bootstrap: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per attribute and "all": share of images whose oracle reading matches their caption.

    Returns `{name: {"value", "ci_low", "ci_high", "chance", "num"}}` for each attribute in
    ATTRIBUTES and "all" (every attribute the caption names is right). A caption that does not
    name an attribute is not scored on it.
    """
    parsed = _parse_all(captions, len(images))
    hits = attribute_hits(oracle.predict(images), parsed)
    chance = chance_levels()
    return {name: summarize(h, chance=chance[name], num_bootstrap=num_bootstrap, seed=seed)
            for name, h in hits.items()}


def caption_codes(captions: list[str]) -> dict[str, torch.Tensor]:
    """Parsed attribute indices per caption [N] for each attribute (-1 where not named)."""
    return encode_attributes([parse_caption(c) for c in captions])


def score_codes(log_probs: dict[str, torch.Tensor], codes: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over the named attributes of log p(value | image row) [N] (row i with codes i)."""
    score = torch.zeros(len(next(iter(codes.values()))), dtype=torch.float64)
    for attr, code in codes.items():
        picked = log_probs[attr].double().gather(1, code.clamp(min=0).unsqueeze(1)).squeeze(1)
        score += torch.where(code >= 0, picked, torch.zeros_like(picked))
    return score


def caption_scores(log_probs: dict[str, torch.Tensor], captions: list[str]) -> torch.Tensor:
    """Sum over the attributes each caption names of log p(value | image row) [N]."""
    return score_codes(log_probs, caption_codes(captions))


def oracle_caption_score(oracle: ShapesOracle, images: Images, captions: list[str]) -> torch.Tensor:
    """How well image i matches caption i under the oracle: sum of attribute log-probs [N]."""
    _parse_all(captions, len(images))
    return caption_scores(oracle.log_probs(images), captions)


def r_precision_hits(scores_true: torch.Tensor, scores_mismatched: torch.Tensor) -> np.ndarray:
    """Per image: 1 when the true caption outscores all mismatched ones [N]; ties share the rank.

    Args:
        scores_true: [N] score of each image with its own caption.
        scores_mismatched: [N, K] scores of each image with K mismatched captions.
    """
    true = torch.as_tensor(scores_true, dtype=torch.float64).unsqueeze(1)  # [N, 1]
    other = torch.as_tensor(scores_mismatched, dtype=torch.float64)  # [N, K]
    if other.ndim != 2 or other.shape[0] != true.shape[0]:
        raise GanT2IError(f"mismatched scores must be [N, K] with N={true.shape[0]}, "
                          f"got {tuple(other.shape)}")
    beaten = (other > true).any(dim=1)
    ties = (other == true).sum(dim=1).double()
    # Expected hit under a random tie-break: 1 / (1 + number of tied mismatched captions).
    return torch.where(beaten, torch.zeros_like(ties), 1.0 / (1.0 + ties)).numpy()


def r_precision(scores_true: torch.Tensor, scores_mismatched: torch.Tensor) -> float:
    """R-precision (R = 1): share of images whose true caption ranks first among 1 + K."""
    return float(r_precision_hits(scores_true, scores_mismatched).mean())


def _attribute_keys(codes: dict[str, torch.Tensor]) -> np.ndarray:
    """One integer per caption identifying its parsed attribute combination [N]."""
    key = np.zeros(len(codes[next(iter(ATTRIBUTES))]), dtype=np.int64)
    for attr, values in ATTRIBUTES.items():
        key = key * (len(values) + 1) + (codes[attr].numpy() + 1)
    return key


def _mismatched_indices(keys: np.ndarray, pool_keys: np.ndarray, k: int,
                        rng: np.random.Generator) -> np.ndarray:
    """For each caption, k pool indices whose attributes differ from its own [N, k]."""
    for key in np.unique(keys):
        if (pool_keys != key).sum() == 0:
            raise GanT2IError("R-precision: the caption pool holds no caption that differs "
                              "from the true one; give a larger caption pool")
    idx = rng.integers(0, len(pool_keys), size=(len(keys), k))
    clash = pool_keys[idx] == keys[:, None]
    while clash.any():  # redraw the few that share the true caption's attributes
        idx[clash] = rng.integers(0, len(pool_keys), size=int(clash.sum()))
        clash = pool_keys[idx] == keys[:, None]
    return idx


def shapes_r_precision(oracle: ShapesOracle, images: Images, captions: list[str], *,
                       caption_pool: list[str] | None = None, num_mismatched: int = 99,
                       num_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """R-precision with the oracle as scorer: the true caption against `num_mismatched` others.

    Mismatched captions are drawn from `caption_pool` (default: `captions`) among those whose
    parsed attributes differ from the true caption's, so a paraphrase never counts as a rival.
    """
    _parse_all(captions, len(images))
    true_codes = caption_codes(captions)
    pool_codes = caption_codes(list(caption_pool)) if caption_pool is not None else true_codes
    rng = np.random.default_rng(seed)
    idx = _mismatched_indices(_attribute_keys(true_codes), _attribute_keys(pool_codes),
                              num_mismatched, rng)  # [N, K]
    log_probs = oracle.log_probs(images)
    rows = torch.arange(len(captions)).repeat_interleave(num_mismatched)  # [N * K]
    flat = torch.from_numpy(idx.ravel())
    other = score_codes({a: v[rows] for a, v in log_probs.items()},
                        {a: c[flat] for a, c in pool_codes.items()})
    hits = r_precision_hits(score_codes(log_probs, true_codes), other.view(len(captions), -1))
    return summarize(hits, chance=1.0 / (1 + num_mismatched), num_bootstrap=num_bootstrap,
                     seed=seed)
