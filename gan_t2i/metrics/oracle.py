"""The shapes oracle: a small CNN that reads shape, colour, size and position off an image.

Trained once per shapes store on its `train` images plus rendered images of the held-out
colour-shape pairs (drawn exactly as the store's own), checked on the real `val` and
`val_heldout` images, and cached on disk by a hash of the store's settings, the oracle version
and the training settings. It scores whether a generated image shows what its caption says
(`metrics.alignment`), and its penultimate features give a domain FID/KID for shapes
(`metrics.extractors`).

Cache layout (one pair per store settings)::

    <cache_dir>/shapes-oracle-<hash>.pt     {"format", "settings", "report", "state_dict"}
    <cache_dir>/shapes-oracle-<hash>.json   {"settings", "report"} for people to read
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from gan_t2i.data.shapes import (
    ATTRIBUTES,
    COLORS,
    SHAPES,
    heldout_combinations,
    render_image,
    sample_scene,
)
from gan_t2i.data.store import ImageStore, StoreSplit
from gan_t2i.metrics.images import Images, batches, resize_square, to_float_images
from gan_t2i.utils import GanT2IError, PathLike, atomic_path, atomic_write_json, configure_cpu, stable_hash

log = logging.getLogger(__name__)

ORACLE_VERSION = 2  # bump when the network or its training changes: old caches are then ignored
ORACLE_RESOLUTION = 32  # every input is resized to this side first, so any store resolution works
FEATURE_DIM = 128
_CACHE_FORMAT = 1
_RENDER_STREAM = 7919  # seeds rendered oracle images apart from every dataset split's stream


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class OracleNet(nn.Module):
    """Six 3x3 conv+BN layers (32 -> 4 px), the 4x4 map flattened (keeps position), one head each."""

    def __init__(self, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(3, 24),  # 32x32
            _conv_bn(24, 32, stride=2),  # 16x16
            _conv_bn(32, 32),
            _conv_bn(32, 64, stride=2),  # 8x8
            _conv_bn(64, 64),
            _conv_bn(64, 64, stride=2),  # 4x4
        )
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, feature_dim), nn.ReLU())
        self.heads = nn.ModuleDict({a: nn.Linear(feature_dim, len(v)) for a, v in ATTRIBUTES.items()})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Images [B, 3, H, W] in [-1, 1] -> (features [B, F], logits per attribute [B, V])."""
        x = resize_square(x, ORACLE_RESOLUTION).contiguous(memory_format=torch.channels_last)
        features = self.embed(self.body(x))  # [B, F]
        return features, {name: head(features) for name, head in self.heads.items()}


def encode_attributes(attributes: list[dict[str, str | None]]) -> dict[str, torch.Tensor]:
    """Attribute dicts -> per attribute, indices into ATTRIBUTES[attr] [N] (-1 where unknown)."""
    codes: dict[str, torch.Tensor] = {}
    for attr, values in ATTRIBUTES.items():
        column = [a.get(attr) for a in attributes]
        bad = sorted({v for v in column if v is not None and v not in values})
        if bad:
            raise GanT2IError(f"unknown {attr} value(s) {bad}; expected one of {list(values)}")
        codes[attr] = torch.tensor([values.index(v) if v is not None else -1 for v in column],
                                   dtype=torch.long)
    return codes


def attribute_hits(predictions: dict[str, torch.Tensor],
                   attributes: list[dict[str, str | None]]) -> dict[str, np.ndarray]:
    """Per sample 1.0 (right) / 0.0 (wrong) / NaN (unknown) for each attribute and for "all".

    "all" is 1.0 when every attribute the sample names is right (NaN when it names none).
    """
    labels = encode_attributes(attributes)
    hits: dict[str, np.ndarray] = {}
    for attr in ATTRIBUTES:
        known = (labels[attr] >= 0).numpy()
        right = (predictions[attr].cpu() == labels[attr]).numpy().astype(np.float64)
        hits[attr] = np.where(known, right, np.nan)
    stacked = np.stack([hits[a] for a in ATTRIBUTES])  # [A, N]
    any_known = ~np.isnan(stacked).all(axis=0)
    all_right = np.nan_to_num(stacked, nan=1.0).min(axis=0)
    hits["all"] = np.where(any_known, all_right, np.nan)
    return hits


class ShapesOracle:
    """A trained `OracleNet` in eval mode with batched, gradient-free helpers."""

    def __init__(self, model: OracleNet, report: dict[str, Any], *,
                 device: torch.device | str = "cpu", batch_size: int = 512):
        self.model = model.to(device).eval()
        self.report = report
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.no_grad()
    def outputs(self, images: Images) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Features [N, F] and logits per attribute [N, V] (on the CPU)."""
        feats, logits = [], {a: [] for a in ATTRIBUTES}
        for chunk in batches(images, self.batch_size):
            f, out = self.model(to_float_images(chunk, self.device))
            feats.append(f.float().cpu())
            for a in ATTRIBUTES:
                logits[a].append(out[a].float().cpu())
        if not feats:
            raise GanT2IError("the shapes oracle got no images")
        return torch.cat(feats), {a: torch.cat(v) for a, v in logits.items()}

    def features(self, images: Images) -> torch.Tensor:
        """Penultimate features [N, FEATURE_DIM] (for FID/KID on shapes)."""
        return self.outputs(images)[0]

    def log_probs(self, images: Images) -> dict[str, torch.Tensor]:
        """Log-probabilities per attribute [N, len(ATTRIBUTES[attr])]."""
        return {a: v.log_softmax(dim=1) for a, v in self.outputs(images)[1].items()}

    def predict(self, images: Images) -> dict[str, torch.Tensor]:
        """Predicted value index per attribute, LongTensor [N] (index into ATTRIBUTES[attr])."""
        return {a: v.argmax(dim=1) for a, v in self.outputs(images)[1].items()}

    def accuracy(self, images: Images, attributes: list[dict[str, str | None]]) -> dict[str, float]:
        """Share of right predictions per attribute and for all attributes at once."""
        hits = attribute_hits(self.predict(images), attributes)
        return {name: float(np.nanmean(h)) if not np.isnan(h).all() else float("nan")
                for name, h in hits.items()}


@dataclass
class LabeledImages:
    """uint8 images [N, H, W, 3] with one attribute dict per image."""

    images: np.ndarray
    attributes: list[dict[str, str]]

    @classmethod
    def from_split(cls, split: StoreSplit) -> LabeledImages:
        """A store split's images (memory-mapped) and their per-image attributes."""
        meta = split.image_meta
        if not meta or "attributes" not in meta[0]:
            raise GanT2IError(f"split {split.folder} has no per-image attributes "
                              "(not a shapes store?)")
        return cls(split.images, [m["attributes"] for m in meta])

    def __add__(self, other: LabeledImages) -> LabeledImages:
        return LabeledImages(np.concatenate([np.asarray(self.images), np.asarray(other.images)]),
                             self.attributes + other.attributes)


def _labeled(data: StoreSplit | LabeledImages) -> LabeledImages:
    return data if isinstance(data, LabeledImages) else LabeledImages.from_split(data)


def render_heldout_pairs(settings: dict[str, Any], num: int, seed: int = 0) -> LabeledImages:
    """Render `num` images of the held-out colour-shape pairs, drawn as the store drew its own.

    The store's train split never shows these pairs; an oracle trained on it alone learns the
    gap (it misread 17% of held-out shapes), so they are added to its training set.
    """
    held = heldout_combinations(settings["seed"], settings["heldout_fraction"])
    res = settings["resolution"]
    if not held or num <= 0:
        return LabeledImages(np.zeros((0, res, res, 3), np.uint8), [])
    scenes = [sample_scene(np.random.default_rng([seed, _RENDER_STREAM, i]), "val_heldout", held,
                           jitter=settings.get("jitter", 0.04), captions_per_image=1)
              for i in range(num)]
    images = [render_image(s, res, settings.get("supersample", 4)) for s in scenes]
    return LabeledImages(np.stack(images), [dict(s.attributes) for s in scenes])


def _train_epoch(model: OracleNet, opt: torch.optim.Optimizer, sched: Any, images: np.ndarray,
                 labels: torch.Tensor, batch_size: int, gen: torch.Generator, bar: tqdm) -> float:
    """One pass over the shuffled train images (last partial batch dropped); mean loss."""
    order = torch.randperm(len(images), generator=gen)
    total, steps = 0.0, 0
    for start in range(0, len(images) - batch_size + 1, batch_size):
        idx = np.sort(order[start:start + batch_size].numpy())
        _, logits = model(to_float_images(images[idx]))
        y = labels[idx]  # [B, A]
        loss = sum(F.cross_entropy(logits[a], y[:, j]) for j, a in enumerate(ATTRIBUTES))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total, steps = total + loss.item(), steps + 1
        bar.update(1)
        bar.set_postfix(loss=f"{total / steps:.3f}")
    return total / max(steps, 1)


def train_oracle(train: StoreSplit | LabeledImages, val: StoreSplit | LabeledImages, *,
                 epochs: int = 2, batch_size: int = 128, lr: float = 3e-3, seed: int = 0,
                 progress: bool = True) -> tuple[OracleNet, dict[str, Any]]:
    """Train an oracle on `train` (CPU, fp32, channels_last); report its accuracy on `val`."""
    configure_cpu()
    train, val = _labeled(train), _labeled(val)
    images = np.array(train.images)  # [N, H, W, 3] uint8, read into memory once
    codes = encode_attributes(train.attributes)
    labels = torch.stack([codes[a] for a in ATTRIBUTES], dim=1)  # [N, A]
    if len(images) == 0:
        raise GanT2IError("the shapes oracle needs train images, got none")
    batch_size = min(batch_size, len(images))  # tiny stores (tests, smoke runs) train too
    steps_per_epoch = len(images) // batch_size
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = OracleNet().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    model.train()
    with tqdm(total=epochs * steps_per_epoch, desc="shapes oracle", unit="step",
              disable=not progress) as bar:
        losses = [_train_epoch(model, opt, sched, images, labels, batch_size, gen, bar)
                  for _ in range(epochs)]
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model.eval()
    report = {"version": ORACLE_VERSION, "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "seed": seed, "num_train": len(images), "num_val": len(val.images),
              "resolution": int(images.shape[1]), "train_seconds": round(seconds, 2),
              "train_cpu_seconds": round(cpu_seconds, 2), "threads": torch.get_num_threads(),
              "epoch_losses": [round(x, 5) for x in losses],
              "val_accuracy": ShapesOracle(model, {}).accuracy(val.images, val.attributes)}
    return model, report


def oracle_settings(store: ImageStore, *, epochs: int, batch_size: int, lr: float, seed: int
                    ) -> dict[str, Any]:
    """What decides a cached oracle: the store's data settings, the version, the training."""
    settings = store.meta.get("settings") or {}
    if settings.get("name") != "shapes":
        raise GanT2IError(f"the shapes oracle needs a shapes store; {store.folder} holds "
                          f"'{settings.get('name', 'unknown')}' data")
    return {"data": settings, "oracle_version": ORACLE_VERSION,
            "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}}


def oracle_cache_path(cache_dir: PathLike, settings: dict[str, Any]) -> Path:
    """`<cache_dir>/shapes-oracle-<hash of settings>.pt`."""
    return Path(cache_dir) / f"shapes-oracle-{stable_hash(settings)}.pt"


def save_oracle(path: PathLike, model: OracleNet, report: dict[str, Any],
                settings: dict[str, Any]) -> None:
    """Write the state dict and plain-data report atomically (+ a JSON copy of the report)."""
    path = Path(path)
    payload = {"format": _CACHE_FORMAT, "settings": settings, "report": report,
               "state_dict": {k: v.contiguous() for k, v in model.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    atomic_write_json(path.with_suffix(".json"), {"settings": settings, "report": report})


def load_oracle(path: PathLike, *, device: torch.device | str = "cpu") -> ShapesOracle:
    """Load a cached oracle (state dict and plain data only: `weights_only=True`)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != _CACHE_FORMAT:
        raise GanT2IError(f"{path}: unknown oracle cache format {payload.get('format')}")
    model = OracleNet().to(memory_format=torch.channels_last)
    model.load_state_dict(payload["state_dict"])
    return ShapesOracle(model, payload["report"], device=device)


def load_or_train_oracle(store: ImageStore, cache_dir: PathLike, *, progress: bool = True,
                         epochs: int = 2, batch_size: int = 128, lr: float = 3e-3, seed: int = 0,
                         device: torch.device | str = "cpu") -> ShapesOracle:
    """The cached oracle for this store's settings, trained (and cached) on first use."""
    settings = oracle_settings(store, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    path = oracle_cache_path(cache_dir, settings)
    if path.is_file():
        try:
            return load_oracle(path, device=device)
        except (RuntimeError, OSError, KeyError, GanT2IError) as err:
            log.warning("cached shapes oracle %s is unreadable (%s); training it again", path, err)
    if "val" not in store.splits:
        raise GanT2IError(f"the shapes oracle needs a 'val' split; {store.folder} has {store.splits}")
    model, report = train_oracle(_training_set(store, seed), store.split("val"), epochs=epochs,
                                 batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    if "val_heldout" in store.splits:  # real images of the held-out pairs, never trained on
        held = LabeledImages.from_split(store.split("val_heldout"))
        report["val_heldout_accuracy"] = ShapesOracle(model, {}).accuracy(held.images,
                                                                          held.attributes)
    _warn_if_weak(report)
    save_oracle(path, model, report, settings)
    return ShapesOracle(model, report, device=device)


def _training_set(store: ImageStore, seed: int) -> LabeledImages:
    """The store's train split plus rendered held-out pairs, as frequent as each seen pair."""
    train = LabeledImages.from_split(store.split("train"))
    settings = store.meta["settings"]
    num_held = len(heldout_combinations(settings["seed"], settings["heldout_fraction"]))
    num_seen = len(COLORS) * len(SHAPES) - num_held
    extra = render_heldout_pairs(settings, round(len(train.images) * num_held / num_seen), seed)
    log.info("shapes oracle: %d store images + %d rendered held-out-pair images",
             len(train.images), len(extra.images))
    return train + extra


def _warn_if_weak(report: dict[str, Any], threshold: float = 0.99) -> None:
    weak = {f"{split}/{k}": round(v, 4) for split in ("val_accuracy", "val_heldout_accuracy")
            for k, v in report.get(split, {}).items() if k != "all" and v < threshold}
    if weak:
        log.warning("shapes oracle below %.2f val accuracy on %s: alignment numbers are "
                    "less trustworthy", threshold, weak)
