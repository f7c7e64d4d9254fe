"""Typed config schemas, registered in Hydra's ConfigStore so a mistyped key fails at compose time.

`conf/config.yaml` lists `schema` first in its defaults: every group file then merges onto a typed
node, and an unknown key fails with a message that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class BadImagePolicy(str, Enum):
    """What prepare does with a missing or undecodable image."""

    skip = "skip"
    error = "error"


@dataclass
class ShapesConfig:
    """Settings of the procedural `shapes` dataset."""

    seed: int = 0
    num_train: int = 20000
    num_val: int = 1000
    num_val_heldout: int = 1000
    heldout_fraction: float = 0.15  # share of colour x shape pairs never seen in train
    captions_per_image: int = 5
    supersample: int = 4  # render at this multiple of the resolution, then downsample
    jitter: float = 0.04  # position jitter, fraction of the side


@dataclass
class DataConfig:
    """Which caption-image dataset, at which resolution."""

    name: str = "shapes"  # shapes | coco
    resolution: int = 64
    annotations: Optional[str] = None  # COCO captions JSON of the train split (coco only)
    images: Optional[str] = None  # image folder of the train split (coco only)
    val_annotations: Optional[str] = None  # optional val split (coco only)
    val_images: Optional[str] = None
    on_bad_image: BadImagePolicy = BadImagePolicy.skip
    xflip: bool = False  # doubles the dataset with mirrored images (off: captions name sides)
    workers: int = 2  # image-decoding processes in prepare
    shapes: ShapesConfig = field(default_factory=ShapesConfig)


@dataclass
class TextConfig:
    """The frozen sentence encoder that turns captions into embeddings."""

    model: str = "minilm"  # alias, sentence-transformers name, or local folder
    batch_size: int = 256
    max_length: Optional[int] = None  # token limit; None keeps the model's own
    tokens: bool = False  # also cache token embeddings [T, D] (for cross-attention)
    max_tokens: int = 32
    device: str = "auto"


@dataclass
class PathsConfig:
    """Where data, caches and runs live (relative paths are relative to the working folder)."""

    data_dir: str = "data"
    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class Config:
    """The root of every gan_t2i config."""

    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    progress: bool = True  # progress bars


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)


def to_plain(cfg: DictConfig | Any) -> Any:
    """A resolved plain-Python copy of a config node (enums as their values)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return cfg


register_configs()

__all__ = [
    "MISSING",
    "BadImagePolicy",
    "Config",
    "DataConfig",
    "PathsConfig",
    "ShapesConfig",
    "TextConfig",
    "register_configs",
    "to_plain",
]
