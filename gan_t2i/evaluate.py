"""`python -m gan_t2i.evaluate run=<run dir>`: score G_ema of a run's checkpoints.

Results are appended to the run's `metrics.jsonl` (one JSON object per number) and printed as
a table. Real-image feature statistics are cached on disk by a hash of what decides them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from gan_t2i.cli import task
from gan_t2i.config import to_plain
from gan_t2i.data import ImageStore
from gan_t2i.metrics.extractors import MetricUnavailable
from gan_t2i.networks import Generator
from gan_t2i.utils import GanT2IError, append_jsonl, atomic_path, resolve_device, stable_hash

log = logging.getLogger(__name__)



@dataclass
class EvalSplit:
    """The captions and real images one split is scored on (one caption per image)."""

    name: str
    captions: list[str]
    embeddings: torch.Tensor  # [N, D] float32
    real: np.ndarray  # uint8 [N, H, W, 3]
    tokens: tuple[torch.Tensor, torch.Tensor] | None = None  # [N, T, D], [N, T] (cross-attention)


def eval_split(store: ImageStore, embeddings: Path, split: str, num: int,
               tokens: Path | None = None) -> EvalSplit:
    """The first caption of each of the first `num` images of `split`."""
    from gan_t2i.training.data import TokenTable

    s = store.split(split)
    rows, images = s.first_captions(num)
    table = np.load(embeddings, mmap_mode="r")
    return EvalSplit(split, [s.captions[i] for i in rows],
                     torch.from_numpy(np.asarray(table[rows], dtype=np.float32)),
                     np.asarray(s.images[images]),
                     TokenTable.load(tokens)(torch.from_numpy(rows)) if tokens else None)


@torch.no_grad()
def generate(G: Generator, c: torch.Tensor, *, seed: int, psi: float, batch_size: int,
             tokens: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """One image per caption embedding, z from a fixed seed: float [N, 3, R, R] on the CPU."""
    device = next(G.parameters()).device
    z = torch.randn(len(c), G.z_dim, generator=torch.Generator().manual_seed(seed))
    out = []
    for i in range(0, len(c), batch_size):
        part = slice(i, i + batch_size)
        tok = tuple(t[part].to(device) for t in tokens) if tokens is not None else None
        out.append(G(z[part].to(device), c[part].to(device), psi=psi, noise_mode="const",
                     tokens=tok).float().cpu())
    return torch.cat(out)


def eval_splits(store: ImageStore, embeddings: dict[str, Path], wanted: list[str]) -> list[str]:
    """The requested evaluation splits that this store has."""
    return [s for s in wanted if s in store.splits and s in embeddings]


class Evaluator:
    """Scores generators against one dataset; holds the oracle and cached real features."""

    def __init__(self, store: ImageStore, embeddings: dict[str, Path], eval_cfg: dict[str, Any],
                 *, cache_dir: Path, device: torch.device, progress: bool = False,
                 tokens: dict[str, Path] | None = None):
        self.store, self.cfg, self.device = store, eval_cfg, device
        self.cache_dir, self.progress = cache_dir, progress
        self.is_shapes = store.meta.get("settings", {}).get("name") == "shapes"
        splits = eval_splits(store, embeddings, eval_cfg["splits"])
        if not splits:
            raise GanT2IError(f"none of eval.splits {eval_cfg['splits']} is in {store.folder}")
        self.splits = [eval_split(store, embeddings[s], s, eval_cfg["num_images"],
                                  tokens[s] if tokens else None) for s in splits]
        self._oracle = None
        self._extractor = None
        self._clip = None
        self.skipped: set[str] = set()  # metrics that cannot run here (said once)

    @property
    def oracle(self):
        """The shapes oracle (trained once per dataset, then cached)."""
        if self._oracle is None:
            if not self.is_shapes:
                raise GanT2IError("shapes metrics need data=shapes")
            from gan_t2i.metrics import load_or_train_oracle

            self._oracle = load_or_train_oracle(self.store, self.cache_dir / "oracle",
                                                progress=self.progress)
        return self._oracle

    @property
    def clip(self):
        """The CLIP scorer (raises MetricUnavailable where no model can be loaded offline)."""
        if self._clip is None:
            from gan_t2i.metrics.clip import load_clip

            self._clip = load_clip(self.cfg.get("clip_model"), device=self.device)
        return self._clip

    def extractor(self):
        """The feature extractor for fid / kid / precision_recall."""
        if self._extractor is None:
            from gan_t2i.metrics import build_feature_extractor

            name = self.cfg["extractor"]
            if name == "auto":
                name = "shapes_oracle" if self.is_shapes else "inception"
            oracle = self.oracle if name == "shapes_oracle" else None
            self._extractor = build_feature_extractor(
                name, device=self.device, oracle=oracle,
                inception_weights=self.cfg.get("inception_weights"))
        return self._extractor

    def real_features(self, split: EvalSplit) -> np.ndarray:
        """Real-image features, cached by (dataset, split, resolution, extractor, count)."""
        ext = self.extractor()
        key = stable_hash({"store": self.store.meta.get("settings"), "split": split.name,
                           "resolution": self.store.meta["resolution"], "extractor": ext.name,
                           "num": len(split.real)})
        path = self.cache_dir / "feature_stats" / f"{ext.name}-{split.name}-{key}.npy"
        if path.is_file():
            return np.load(path)
        features = np.asarray(ext(split.real), dtype=np.float32)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, features)
        return features

    def score(self, G: Generator, metrics: list[str]) -> list[dict[str, Any]]:
        """All requested metrics on every split; one record per number."""
        records = []
        for split in self.splits:
            fakes = generate(G, split.embeddings, seed=self.cfg["seed"], tokens=split.tokens,
                             psi=self.cfg["truncation"], batch_size=self.cfg["batch_size"])
            for name in metrics:
                if name in self.skipped:
                    continue
                try:
                    results = _METRIC_FNS[name](self, split, fakes)
                except MetricUnavailable as e:  # e.g. no Inception weights offline: go on
                    log.warning("%s skipped: %s", name, e)
                    self.skipped.add(name)
                    continue
                records += [{"split": split.name, "num_images": len(fakes), **r} for r in results]
        return records


def _alignment(ev: Evaluator, split: EvalSplit, fakes: torch.Tensor) -> list[dict]:
    from gan_t2i.metrics import shapes_alignment

    result = shapes_alignment(ev.oracle, fakes, split.captions,
                              num_bootstrap=ev.cfg["num_bootstrap"], seed=ev.cfg["seed"])
    return [{"metric": f"shapes_alignment/{attr}", **v, "protocol": "shapes oracle"}
            for attr, v in result.items()]


def _r_precision(ev: Evaluator, split: EvalSplit, fakes: torch.Tensor) -> list[dict]:
    from gan_t2i.metrics import shapes_r_precision
    from gan_t2i.metrics.clip import clip_r_precision

    pool = [c for s in ev.splits for c in s.captions]
    scorer = ev.cfg.get("r_precision_scorer", "auto")
    if scorer == "auto":
        scorer = "oracle" if ev.is_shapes else "clip"
    kwargs = dict(caption_pool=pool, num_bootstrap=ev.cfg["num_bootstrap"], seed=ev.cfg["seed"])
    if scorer == "oracle":
        r = shapes_r_precision(ev.oracle, fakes, split.captions, **kwargs)
    else:
        r = clip_r_precision(ev.clip, fakes, split.captions, **kwargs)
    return [{"metric": "r_precision", **r, "protocol": f"{scorer} scorer, 1 + 99 captions"}]


def _clip_score(ev: Evaluator, split: EvalSplit, fakes: torch.Tensor) -> list[dict]:
    from gan_t2i.metrics.clip import clip_score

    r = clip_score(ev.clip, fakes, split.captions, num_bootstrap=ev.cfg["num_bootstrap"],
                   seed=ev.cfg["seed"])
    r.pop("chance", None)
    return [{"metric": "clip_score", **r, "protocol": f"CLIP {ev.clip.name}, 100 * max(cos, 0)"}]


def _feature_metrics(ev: Evaluator, split: EvalSplit, fakes: torch.Tensor, which: str
                     ) -> list[dict]:
    from gan_t2i.metrics import feature_stats, frechet_distance, kid, precision_recall

    real = ev.real_features(split)
    fake = np.asarray(ev.extractor()(fakes), dtype=np.float32)
    protocol = f"{ev.extractor().name} features, {len(real)} real {split.name} vs {len(fake)} generated"
    if which == "fid":
        value = frechet_distance(*feature_stats(real), *feature_stats(fake))
        return [{"metric": f"fid_{ev.extractor().name}", "value": value, "protocol": protocol}]
    if which == "kid":
        size = min(ev.cfg["kid_subset_size"], len(real), len(fake))
        if size < ev.cfg["kid_subset_size"]:
            log.info("kid: subset size %d (fewer images than eval.kid_subset_size)", size)
        mean, std = kid(real, fake, subset_size=size, seed=ev.cfg["seed"])
        return [{"metric": f"kid_{ev.extractor().name}", "value": mean, "std": std,
                 "protocol": f"{protocol}, subsets of {size}"}]
    p, r = precision_recall(real, fake)
    return [{"metric": f"precision_{ev.extractor().name}", "value": p, "protocol": protocol},
            {"metric": f"recall_{ev.extractor().name}", "value": r, "protocol": protocol}]


_METRIC_FNS: dict[str, Callable[[Evaluator, EvalSplit, torch.Tensor], list[dict]]] = {
    "shapes_alignment": _alignment,
    "r_precision": _r_precision,
    "clip_score": _clip_score,
    "fid": lambda ev, s, f: _feature_metrics(ev, s, f, "fid"),
    "kid": lambda ev, s, f: _feature_metrics(ev, s, f, "kid"),
    "precision_recall": lambda ev, s, f: _feature_metrics(ev, s, f, "pr"),
}


def check_metrics(metrics: list[str]) -> None:
    """An unknown metric name is one clear error, before anything runs."""
    unknown = [m for m in metrics if m not in _METRIC_FNS]
    if unknown:
        raise GanT2IError(f"unknown metric '{unknown[0]}'; known: {', '.join(_METRIC_FNS)}")


def format_table(records: list[dict[str, Any]]) -> str:
    """A plain-text table of evaluation records."""
    lines = [f"{'kimg':>8}  {'split':<12} {'metric':<28} {'value':>9}  {'95% CI':<17} {'chance':>7}"]
    for r in records:
        ci = (f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
              if not math.isnan(r.get("ci_low", math.nan)) else "")
        chance = f"{r['chance']:.3f}" if "chance" in r else ""
        lines.append(f"{r.get('kimg', 0):>8.1f}  {r['split']:<12} {r['metric']:<28} "
                     f"{r['value']:>9.4f}  {ci:<17} {chance:>7}")
    return "\n".join(lines)


def select_checkpoints(run: Path, which: str) -> list[Path]:
    """`last`, `all`, a kimg number, or a path, resolved to checkpoint files."""
    from gan_t2i.training.checkpoint import list_snapshots, snapshot_kimg

    folder = run / "checkpoints"
    if Path(which).suffix == ".pt":
        return [Path(which)]
    if not folder.is_dir() or not any(folder.glob("*.pt")):
        raise GanT2IError(f"no checkpoints in {folder}")
    if which == "last":
        return [folder / "last.pt"]
    snaps = list_snapshots(folder)
    if which == "all":
        return snaps
    try:
        kimg = float(which)
    except ValueError:
        raise GanT2IError(f"checkpoint must be last, all, a kimg or a .pt path, got '{which}'") from None
    match = [p for p in snaps if abs(snapshot_kimg(p) - kimg) < 1e-6]
    if not match:
        raise GanT2IError(f"no snapshot at {kimg} kimg in {folder}")
    return match


def evaluate_run(run: Path, *, checkpoint: str, metrics: list[str], eval_cfg: dict[str, Any],
                 data_dir: str, device: torch.device, progress: bool = True) -> list[dict]:
    """Score each selected checkpoint; append records to the run's metrics.jsonl."""
    from gan_t2i.prepare import prepare
    from gan_t2i.sample import generator_from_checkpoint
    from gan_t2i.training.checkpoint import load_checkpoint

    check_metrics(metrics)
    if not run.is_dir():
        raise GanT2IError(f"run folder not found: {run}")
    paths = select_checkpoints(run, checkpoint)
    evaluator, all_records = None, []
    for path in paths:
        state = load_checkpoint(path, map_location="cpu")
        G, source = generator_from_checkpoint(state, path, device=device)
        if evaluator is None:
            cfg = state["config"]
            prepared = prepare(cfg["data"], cfg["text"], data_dir, progress=progress)
            attention = any(block.attention is not None for block in G.blocks)
            evaluator = Evaluator(prepared.store, prepared.embeddings, eval_cfg,
                                  cache_dir=Path(data_dir) / "eval", device=device,
                                  progress=progress, tokens=prepared.tokens if attention else None)
        records = [{"kimg": source["kimg"], **r, "checkpoint": str(path), "seed": eval_cfg["seed"],
                    "truncation": eval_cfg["truncation"], "time": time.time()}
                   for r in evaluator.score(G, metrics)]
        for r in records:
            append_jsonl(run / "metrics.jsonl", r)
        all_records += records
    return all_records


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@task
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    plain = to_plain(cfg)
    metrics = plain["metrics"] or plain["eval"]["metrics"]
    records = evaluate_run(Path(plain["run"]), checkpoint=str(plain["checkpoint"]), metrics=metrics,
                           eval_cfg=plain["eval"], data_dir=plain["paths"]["data_dir"],
                           device=resolve_device(plain["device"]), progress=plain["progress"])
    print(format_table(records))
    print(f"appended {len(records)} results to {Path(plain['run']) / 'metrics.jsonl'}")


if __name__ == "__main__":
    main()
