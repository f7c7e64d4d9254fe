"""Tests of the shapes oracle: accuracy on real images, alignment with shuffled captions, cache."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gan_t2i.data import prepare_store
from gan_t2i.metrics import oracle as oracle_module
from gan_t2i.metrics.alignment import shapes_alignment, shapes_r_precision
from gan_t2i.metrics.images import to_float_images
from gan_t2i.metrics.oracle import FEATURE_DIM, load_or_train_oracle, oracle_settings
from gan_t2i.utils import GanT2IError

# Few images but enough optimizer steps (3 epochs x 62 steps) for shape, the slowest attribute.
TRAIN = {"epochs": 3, "batch_size": 32}
DATA = {"name": "shapes", "resolution": 32, "workers": 0,
        "shapes": {"seed": 0, "num_train": 2000, "num_val": 300, "num_val_heldout": 200,
                   "heldout_fraction": 0.15, "captions_per_image": 5, "supersample": 4,
                   "jitter": 0.04}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(store, cache_dir, oracle) with the oracle trained once for this module."""
    root = tmp_path_factory.mktemp("oracle")
    store, _ = prepare_store(DATA, root / "data", progress=False)
    cache = root / "cache"
    threads = torch.get_num_threads()
    # This small CNN gains little from a second thread, and on a busy machine (tests beside a
    # training job) a second spinning OpenMP thread made each step ~4x slower.
    torch.set_num_threads(1)
    try:
        return store, cache, load_or_train_oracle(store, cache, progress=False, **TRAIN)
    finally:
        torch.set_num_threads(threads)


def _val_pairs(store) -> tuple[np.ndarray, list[str]]:
    """Every val caption with its image (images repeated, one row per caption)."""
    val = store.split("val")
    return val.images[val.caption_image], list(val.captions)


@pytest.mark.slow
def test_oracle_reads_real_val_images(trained):
    store, _, oracle = trained
    val = store.split("val")
    accuracy = oracle.accuracy(val.images, [m["attributes"] for m in val.image_meta])
    assert min(accuracy.values()) >= 0.95, accuracy
    assert oracle.report["val_accuracy"] == pytest.approx(accuracy)
    # Pairs absent from the train split are still read (the oracle also trains on renders of them).
    assert min(oracle.report["val_heldout_accuracy"].values()) >= 0.95, oracle.report
    assert oracle.report["num_train"] == 2000 + 400  # 4 held-out pairs of 24 -> 2000 * 4 / 20
    features = oracle.features(val.images[:10])
    assert features.shape == (10, FEATURE_DIM)
    as_float = oracle.predict(to_float_images(val.images[:50]))  # generator format gives the same
    assert all(torch.equal(as_float[a], p) for a, p in oracle.predict(val.images[:50]).items())


@pytest.mark.slow
def test_alignment_with_own_and_shuffled_captions(trained):
    store, _, oracle = trained
    images, captions = _val_pairs(store)
    own = shapes_alignment(oracle, images, captions, num_bootstrap=200)
    assert own["all"]["value"] >= 0.95 and own["all"]["num"] == len(captions)
    order = np.random.default_rng(0).permutation(len(captions))
    shuffled = shapes_alignment(oracle, images, [captions[i] for i in order], num_bootstrap=200)
    assert shuffled["all"]["value"] < 0.2
    assert shuffled["all"]["ci_high"] < own["all"]["ci_low"]
    r_prec = shapes_r_precision(oracle, images[:300], captions[:300], caption_pool=captions,
                                num_bootstrap=100)
    assert r_prec["value"] > 0.9 and r_prec["chance"] == 0.01


@pytest.mark.slow
def test_cached_oracle_is_loaded_not_retrained(trained, monkeypatch):
    store, cache, oracle = trained
    assert len(list(cache.glob("shapes-oracle-*.pt"))) == 1
    assert len(list(cache.glob("shapes-oracle-*.json"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached oracle was retrained")

    monkeypatch.setattr(oracle_module, "train_oracle", no_training)
    start = time.perf_counter()
    again = load_or_train_oracle(store, cache, progress=False, **TRAIN)
    assert time.perf_counter() - start < 2.0
    images = store.split("val").images[:64]
    assert torch.equal(again.features(images), oracle.features(images))
    assert again.report == oracle.report


def test_rendered_heldout_pairs_match_the_store_drawing():
    settings = {"resolution": 16, "seed": 0, "heldout_fraction": 0.15, "supersample": 2,
                "jitter": 0.04}
    data = oracle_module.render_heldout_pairs(settings, 40)
    held = set(oracle_module.heldout_combinations(0, 0.15))
    assert data.images.shape == (40, 16, 16, 3) and data.images.dtype == np.uint8
    assert {(a["color"], a["shape"]) for a in data.attributes} == held
    assert not np.array_equal(data.images[0], data.images[1])


def test_oracle_refuses_a_store_that_is_not_shapes(tmp_path: Path):
    store = SimpleNamespace(meta={"settings": {"name": "coco"}}, folder=tmp_path)
    with pytest.raises(GanT2IError, match="needs a shapes store"):
        oracle_settings(store, epochs=1, batch_size=8, lr=1e-3, seed=0)
