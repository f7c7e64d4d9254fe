"""Typed config schemas, registered in Hydra's ConfigStore so a mistyped key fails at compose time.

`conf/config.yaml` lists `schema` first in its defaults: every group file then merges onto a typed
node, and an unknown key fails with a message that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from gan_t2i.utils import stable_hash


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
    annotations: str | None = None  # COCO captions JSON of the train split (coco only)
    images: str | None = None  # image folder of the train split (coco only)
    val_annotations: str | None = None  # optional val split (coco only)
    val_images: str | None = None
    on_bad_image: BadImagePolicy = BadImagePolicy.skip
    xflip: bool = False  # doubles the dataset with mirrored images (off: captions name sides)
    workers: int = 2  # image-decoding processes in prepare
    shapes: ShapesConfig = field(default_factory=ShapesConfig)


@dataclass
class TextConfig:
    """The frozen sentence encoder that turns captions into embeddings."""

    model: str = "minilm"  # alias, sentence-transformers name, or local folder
    batch_size: int = 256
    max_length: int | None = None  # token limit; None keeps the model's own
    tokens: bool = False  # also cache token embeddings [T, D] (for cross-attention)
    max_tokens: int = 32
    device: str = "auto"
    # Interchangeable words (colours, shapes, positions...): each train caption also gets one
    # variant per group it mentions with that word swapped, a hard negative for loss.swap_weight.
    swap_groups: list[list[str]] = field(default_factory=list)
    # Keep only variants that are themselves train captions (closed vocabularies like shapes:
    # held-out attribute combinations then never appear, not even as negatives).
    swap_known_only: bool = False


@dataclass
class PathsConfig:
    """Where data, caches and runs live (relative paths are relative to the working folder)."""

    data_dir: str = "data"
    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class GeneratorConfig:
    """Text-conditioned StyleGAN2-style generator (resolution comes from data.resolution)."""

    z_dim: int = 64
    w_dim: int = 128
    t_dim: int = 128  # learned caption features fed to the mapping and to every style
    mapping_layers: int = 2
    mapping_lr_mul: float = 0.01
    channel_base: int = 4096  # channels at resolution r: min(channel_base / r, channel_max)
    channel_max: int = 128
    grouped_modconv: bool = False  # True: per-sample weights + grouped conv (StyleGAN2 fused)
    attention_resolutions: list[int] = field(default_factory=list)  # needs text.tokens=true
    attention_heads: int = 4
    center_text: bool = True  # centre caption embeddings on the train-set mean


@dataclass
class DiscriminatorConfig:
    """Projection discriminator."""

    channel_base: int = 4096
    channel_max: int = 128
    cmap_dim: int | None = None  # projection width (default: channels at 4x4)
    projection: bool = True  # False: D ignores the caption (ablation)
    mbstd_group: int = 4
    mbstd_channels: int = 1
    center_text: bool = True


@dataclass
class LossConfig:
    """Adversarial loss and regularisers."""

    kind: str = "nonsaturating"  # nonsaturating | hinge
    r1_gamma: float = 1.0
    r1_interval: int = 16  # lazy R1 every N steps; 0 disables
    mismatch_weight: float = 0.5  # matching-aware: real image + wrong caption counts as fake
    swap_weight: float = 0.0  # real image + its caption with one word swapped (text.swap_groups)
    swap_weight_g: float = 0.0  # G: D should reject its fake under the swapped captions
    style_mixing: float = 0.0  # probability of style mixing regularisation


@dataclass
class AugmentConfig:
    """DiffAugment applied to everything D sees."""

    policy: str = ""  # e.g. "color,translation,cutout"; empty: off


@dataclass
class TrainConfig:
    """The training loop. Progress is counted in kimg (thousands of real images shown to D)."""

    total_kimg: float = 100.0
    batch_size: int = 32  # global batch (split across DDP ranks)
    g_lr: float = 0.002
    d_lr: float = 0.002
    betas: list[float] = field(default_factory=lambda: [0.0, 0.99])
    ema_kimg: float = 1.0  # half-life of G_ema in kimg
    ema_rampup: float | None = 0.05  # half-life <= this fraction of images seen so far
    tick_kimg: float = 1.0  # a stats.jsonl line every tick
    snapshot_kimg: float = 10.0  # checkpoint + sample grid
    keep_snapshots: int = 3  # snapshots kept besides last.pt (0: all)
    eval_every_kimg: float = 0.0  # run eval.metrics during training (0: off)
    resume: str = "auto"  # auto | none | path to a checkpoint or run folder
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto | bf16 | off: bfloat16 autocast (auto: on GPU, and on CPUs with
    # native bf16, AVX512-BF16 or AMX; emulated bf16 is several times slower than fp32)
    channels_last: bool = True
    compile: bool = False  # torch.compile the networks (falls back with a warning)
    workers: int = 0  # DataLoader workers (0: load in the main process; the store is mmapped)
    num_threads: int = 0  # torch intra-op threads (0: leave torch's default)
    max_nonfinite: int = 5  # stop after this many non-finite steps in a row
    sample_captions: int = 6  # captions per split in the snapshot grid
    sample_z: int = 6  # z per caption in the snapshot grid


@dataclass
class EvalConfig:
    """Evaluation settings (python -m gan_t2i.evaluate, and train.eval_every_kimg)."""

    metrics: list[str] = field(default_factory=lambda: [
        "shapes_alignment", "r_precision", "fid", "kid", "precision_recall"])
    num_images: int = 1000  # generated images per split (one per evaluation image's caption)
    splits: list[str] = field(default_factory=lambda: ["val", "val_heldout"])
    extractor: str = "auto"  # features for fid/kid/pr: auto (shapes_oracle on shapes,
    # inception otherwise) | shapes_oracle | inception | random_cnn
    inception_weights: str | None = None  # local TorchScript inception-2015-12-05.pt
    clip_model: str = "openai/clip-vit-base-patch32"  # local folder or a name in the HF cache
    r_precision_scorer: str = "auto"  # auto (shapes oracle on shapes, else clip) | oracle | clip
    truncation: float = 1.0
    seed: int = 0
    batch_size: int = 64
    kid_subset_size: int = 1000
    num_bootstrap: int = 1000


@dataclass
class LoggerConfig:
    """Where logs go besides the run folder's JSON lines."""

    mode: str = "disabled"  # disabled | offline | online (wandb)
    project: str = "gan_t2i"
    tags: list[str] = field(default_factory=list)


@dataclass
class Config:
    """The root of every gan_t2i config."""

    name: str = "default"  # experiment name, the first part of the run folder's name
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    progress: bool = True  # progress bars


@dataclass
class EvaluateConfig:
    """python -m gan_t2i.evaluate: score a run's checkpoints."""

    run: str = MISSING  # run folder
    checkpoint: str = "last"  # last | all | <kimg> | path to a .pt
    metrics: list[str] | None = None  # default: eval.metrics
    device: str = "auto"
    eval: EvalConfig = field(default_factory=EvalConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    progress: bool = True


def _hash_resolver(text: Any) -> str:
    return stable_hash(str(text), length=8)


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore and the `gan_t2i.hash` resolver."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    if not OmegaConf.has_resolver("gan_t2i.hash"):
        OmegaConf.register_new_resolver("gan_t2i.hash", _hash_resolver)


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
