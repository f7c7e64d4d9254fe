"""Tests of the feature extractors: random CNN, Inception loading, and the FID pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gan_t2i.data.shapes import render_image, sample_scene
from gan_t2i.metrics import extractors
from gan_t2i.metrics.extractors import MetricUnavailable, build_feature_extractor, clean_resize
from gan_t2i.metrics.frechet import feature_stats, frechet_distance
from gan_t2i.utils import GanT2IError


def _shapes_images(n: int, seed: int) -> np.ndarray:
    scenes = [sample_scene(np.random.default_rng([seed, i]), "train", []) for i in range(n)]
    return np.stack([render_image(s, 32, 2) for s in scenes])  # [n, 32, 32, 3] uint8


def test_random_cnn_is_deterministic_across_constructions():
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    torch.manual_seed(123)  # the global RNG must not matter
    a = build_feature_extractor("random_cnn")(images)
    torch.manual_seed(456)
    b = build_feature_extractor("random_cnn")(images)
    assert a.shape == (6, build_feature_extractor("random_cnn").dim)
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])


def test_random_cnn_fid_pipeline_separates_shapes_from_noise():
    fid = build_feature_extractor("random_cnn")
    real = feature_stats(fid(_shapes_images(120, seed=0)))
    other_real = feature_stats(fid(_shapes_images(120, seed=1)))
    noise = np.random.default_rng(0).integers(0, 256, (120, 32, 32, 3), dtype=np.uint8)
    from_noise = feature_stats(fid(noise))
    same = frechet_distance(*real, *other_real)
    different = frechet_distance(*real, *from_noise)
    assert different > 5 * same


def test_float_and_uint8_images_give_the_same_features():
    images = _shapes_images(4, seed=0)
    floats = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    fid = build_feature_extractor("random_cnn")
    assert torch.allclose(fid(images), fid(floats), atol=1e-5)


def test_inception_without_weights_says_where_to_put_them(tmp_path: Path, monkeypatch):
    missing = tmp_path / "nowhere" / "inception-2015-12-05.pt"
    monkeypatch.setattr(extractors, "CLEANFID_INCEPTION_PATH", missing)
    with pytest.raises(MetricUnavailable) as err:
        build_feature_extractor("inception")
    message = str(err.value)
    assert "\n" not in message and str(missing) in message
    explicit = tmp_path / "my_weights.pt"
    with pytest.raises(MetricUnavailable, match=str(explicit)):
        build_feature_extractor("inception", inception_weights=explicit)


class _FakeLayers(nn.Module):
    """Feature 0 = mean normalized input, feature 1 = input side: exposes the protocol."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 2048, 1, 1)
        out[:, 0, 0, 0] = x.mean(dim=(1, 2, 3))
        out[:, 1, 0, 0] = float(x.shape[2])
        return out


class _FakeInception(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = _FakeLayers()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x) * self.scale


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_inception_follows_the_clean_fid_protocol(tmp_path: Path):
    path = tmp_path / "fake-inception.pt"
    torch.jit.save(torch.jit.script(_FakeInception()), str(path))
    fid = build_feature_extractor("inception", inception_weights=path)
    images = np.stack([np.full((16, 16, 3), v, np.uint8) for v in (0, 128, 255)])
    features = fid(images)
    assert features.shape == (3, 2048)
    assert features[:, 0].tolist() == pytest.approx([-1.0, 0.0, 127 / 128], abs=1e-4)
    assert features[:, 1].tolist() == [299.0] * 3
    resized = clean_resize(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8))
    assert resized.shape == (299, 299, 3) and resized.dtype == np.float32


def test_inception_rejects_a_file_that_is_not_torchscript(tmp_path: Path):
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(MetricUnavailable, match="not the TorchScript"):
        build_feature_extractor("inception", inception_weights=path)


def test_registry_errors():
    with pytest.raises(GanT2IError, match="known: .*random_cnn"):
        build_feature_extractor("vgg")
    with pytest.raises(GanT2IError, match="needs a trained oracle"):
        build_feature_extractor("shapes_oracle")
