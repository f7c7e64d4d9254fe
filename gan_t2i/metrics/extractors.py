"""Feature extractors for FID/KID/precision-recall, by name.

    random_cnn     a fixed-seed random CNN: needs no weights, so the whole pipeline runs in tests
    shapes_oracle  the shapes oracle's penultimate features: a domain FID for shapes
    inception      the standard FID Inception (clean-fid protocol) from a local TorchScript file

Every factory takes the same keyword arguments (`device`, `oracle`, `inception_weights`) and
ignores those it does not need, so a caller builds any of them the same way.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from gan_t2i.metrics.images import Images, batches, resize_square, to_float_images, to_uint8_images
from gan_t2i.metrics.oracle import FEATURE_DIM, ShapesOracle
from gan_t2i.utils import GanT2IError, PathLike

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                 + INCEPTION_FILE)
CLEANFID_INCEPTION_PATH = Path("/tmp") / INCEPTION_FILE  # where clean-fid downloads it
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048


class MetricUnavailable(GanT2IError):
    """A metric cannot run here (missing weights, no network): say so in one line and go on."""


@dataclass
class FeatureExtractor:
    """A named images -> features [N, dim] function applied in batches."""

    name: str
    dim: int
    embed: Callable[[Images], torch.Tensor]  # one batch -> [B, dim]
    batch_size: int = 256

    def __call__(self, images: Images) -> torch.Tensor:
        """Features [N, dim] (float32, on the CPU) of uint8 [N, H, W, 3] or float [N, 3, H, W]."""
        parts = [self.embed(chunk).float().cpu() for chunk in batches(images, self.batch_size)]
        if not parts:
            return torch.zeros(0, self.dim)
        return torch.cat(parts)


class RandomCNN(nn.Module):
    """Three random 3x3 stride-2 convs on a 32x32 input, mean- and 2x2-pooled: 320 features."""

    channels = (3, 16, 32, 64)

    def __init__(self, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)  # never touches the global RNG
        weights = [torch.randn(c_out, c_in, 3, 3, generator=gen) * math.sqrt(2.0 / (9 * c_in))
                   for c_in, c_out in zip(self.channels[:-1], self.channels[1:])]
        self.weights = nn.ParameterList([nn.Parameter(w, requires_grad=False) for w in weights])

    @property
    def dim(self) -> int:
        """Output features per image."""
        return self.channels[-1] * 5

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> [B, 320]."""
        x = resize_square(x, 32)
        for w in self.weights:
            x = torch.relu(nn.functional.conv2d(x, w, stride=2, padding=1))  # -> [B, 64, 4, 4]
        pooled = nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)  # [B, 256], keeps layout
        return torch.cat([x.mean(dim=(2, 3)), pooled], dim=1)


def random_cnn_extractor(*, device: torch.device | str = "cpu", oracle: ShapesOracle | None = None,
                         inception_weights: PathLike | None = None) -> FeatureExtractor:
    """Fixed-seed random CNN features: deterministic, weight-free (for tests and smoke runs)."""
    net = RandomCNN(seed=0).to(device)
    return FeatureExtractor("random_cnn", net.dim, lambda x: net(to_float_images(x, device)))


def oracle_extractor(*, device: torch.device | str = "cpu", oracle: ShapesOracle | None = None,
                     inception_weights: PathLike | None = None) -> FeatureExtractor:
    """The shapes oracle's penultimate features (needs `oracle`, see `load_or_train_oracle`)."""
    if oracle is None:
        raise GanT2IError("the shapes_oracle feature extractor needs a trained oracle")
    return FeatureExtractor("shapes_oracle", FEATURE_DIM, oracle.features, batch_size=1024)


def find_inception_weights(inception_weights: PathLike | None = None) -> Path:
    """The TorchScript Inception file: the given path, else clean-fid's download location."""
    if inception_weights is not None:
        path = Path(inception_weights).expanduser()
        if not path.is_file():
            raise MetricUnavailable(f"Inception weights not found at {path}: put the TorchScript "
                                    f"{INCEPTION_FILE} there (from {INCEPTION_URL})")
        return path
    if CLEANFID_INCEPTION_PATH.is_file():
        return CLEANFID_INCEPTION_PATH
    raise MetricUnavailable(f"FID/KID with Inception needs {INCEPTION_FILE} (no network here): "
                            f"download {INCEPTION_URL} and put it at {CLEANFID_INCEPTION_PATH} "
                            "or pass inception_weights=PATH")


def clean_resize(image: np.ndarray, size: int = INCEPTION_SIZE) -> np.ndarray:
    """clean-fid's resize: each channel as a float PIL image, bicubic, no rounding [S, S, 3]."""
    channels = [
        np.asarray(Image.fromarray(image[:, :, i].astype(np.float32), mode="F")
                   .resize((size, size), resample=Image.Resampling.BICUBIC))
        for i in range(3)
    ]
    return np.stack(channels, axis=2)


class InceptionFeatures(nn.Module):
    """clean-fid's use of the TorchScript Inception: uint8 -> resize 299 -> pool3 [B, 2048]."""

    def __init__(self, path: PathLike):
        super().__init__()
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated, but the reference network is only published as one.
                warnings.simplefilter("ignore", FutureWarning)
                self.base = torch.jit.load(str(path), map_location="cpu").eval()
            self.layers = self.base.layers
        except (RuntimeError, AttributeError, ValueError) as err:
            raise MetricUnavailable(f"{path} is not the TorchScript {INCEPTION_FILE} "
                                    f"(from {INCEPTION_URL}): {str(err).splitlines()[0]}") from err

    @torch.no_grad()
    def forward(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> features [B, 2048]."""
        device = next(self.base.parameters()).device
        resized = np.stack([clean_resize(im) for im in images])  # [B, 299, 299, 3] in 0..255
        x = torch.from_numpy(resized).permute(0, 3, 1, 2).to(device)
        return self.layers((x - 128.0) / 128.0).reshape(len(images), INCEPTION_DIM)


def inception_extractor(*, device: torch.device | str = "cpu", oracle: ShapesOracle | None = None,
                        inception_weights: PathLike | None = None) -> FeatureExtractor:
    """Inception-v3 pool3 features as clean-fid computes them (images quantized to uint8 first)."""
    net = InceptionFeatures(find_inception_weights(inception_weights)).to(device)
    return FeatureExtractor("inception", INCEPTION_DIM, lambda x: net(to_uint8_images(x)),
                            batch_size=64)


FEATURE_EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "random_cnn": random_cnn_extractor,
    "shapes_oracle": oracle_extractor,
    "inception": inception_extractor,
}


def build_feature_extractor(name: str, *, device: torch.device | str = "cpu",
                            oracle: ShapesOracle | None = None,
                            inception_weights: PathLike | None = None) -> FeatureExtractor:
    """Build the extractor registered under `name`."""
    if name not in FEATURE_EXTRACTORS:
        raise GanT2IError(f"unknown feature extractor '{name}'; known: {sorted(FEATURE_EXTRACTORS)}")
    return FEATURE_EXTRACTORS[name](device=device, oracle=oracle,
                                    inception_weights=inception_weights)
