"""`python -m gan_t2i.prepare`: build the image store and the caption-embedding cache.

Both are keyed by a hash of their settings and reused when complete, so a rerun is cheap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from gan_t2i.cli import task
from gan_t2i.config import to_plain
from gan_t2i.data import ImageStore, prepare_store
from gan_t2i.utils import GanT2IError, atomic_path, resolve_device, stable_hash

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Where prepare put things: the store and, per split, the aligned caption embeddings."""

    store: ImageStore
    embeddings: dict[str, Path]
    embedding_dim: int
    encoded: int
    built_store: bool
    tokens: dict[str, Path]  # per split, with text.tokens=true (else empty)
    swaps: Path | None = None  # train split's swapped-caption negatives, with text.swap_groups


def aligned_embeddings_path(cache_folder: Path, store: ImageStore, split: str) -> Path:
    """Row i of this file is the embedding of caption i of `split` in `store`."""
    return cache_folder / "aligned" / store.folder.name / f"{split}.npy"


def prepare_embeddings(store: ImageStore, text: dict[str, Any], data_dir: Path, *,
                       progress: bool = True) -> tuple[dict[str, Path], int, int, Path | None]:
    """Encode every caption of the store once (incrementally) and write per-split aligned arrays.

    With `text.swap_groups`, the train split's swapped captions (hard negatives) are encoded
    too and written beside its aligned array; the last item returned is that file (else None).
    """
    from gan_t2i.text import EmbeddingCache, SentenceEncoder, model_identity, write_aligned
    from gan_t2i.text.swaps import CaptionSwapper

    identity = model_identity(text["model"], max_length=text.get("max_length"))
    cache = EmbeddingCache(data_dir / "embeddings", identity, tokens=bool(text.get("tokens")),
                           max_tokens=int(text.get("max_tokens", 32)))
    device = str(resolve_device(text.get("device", "auto")))

    def factory() -> SentenceEncoder:
        return SentenceEncoder(text["model"], device=device, batch_size=int(text["batch_size"]),
                               max_length=text.get("max_length"))

    captions = [c for split in store.splits for c in store.split(split).captions]
    swapper = CaptionSwapper(text["swap_groups"]) if text.get("swap_groups") else None
    known_only = bool(text.get("swap_known_only"))
    swaps = None
    if swapper is not None and "train" in store.splits:
        swaps = SwapPlan.of(store.split("train").captions, swapper, known_only=known_only)
        captions += swaps.texts
    encoded = cache.build(captions, factory, batch_size=int(text["batch_size"]), progress=progress)
    paths, dim = {}, 0
    for split in store.splits:
        path = aligned_embeddings_path(cache.path, store, split)
        if not path.is_file() or encoded:
            write_aligned(cache, store.split(split).captions, path)
        if cache.tokens and (not tokens_path(path).is_file() or encoded):
            write_aligned_tokens(cache, store.split(split).captions, tokens_path(path))
        paths[split] = path
        dim = cache.dim
    swaps_file = None
    if swaps is not None:
        swaps_file = swaps_path(paths["train"], swapper.groups, known_only=known_only)
        if not swaps_file.is_file() or encoded:
            swaps.write(cache, swaps_file)
    return paths, encoded, dim, swaps_file


@dataclass
class SwapPlan:
    """Which swapped captions a split needs: distinct texts, and per caption its variants' rows."""

    texts: list[str]  # distinct swapped captions
    rows: np.ndarray  # int32 [M, G]: row in `texts` of caption i's variant for group g, or -1

    @classmethod
    def of(cls, captions: list[str], swapper: Any, *, known_only: bool = False) -> SwapPlan:
        """Variants of each distinct caption (shapes: 2,400 distinct among 100,000).

        `known_only`: keep only variants that are themselves captions of this split, so no
        caption text outside the split (say, a held-out attribute combination) is ever shown.
        """
        unique, inverse = np.unique(np.asarray(captions, dtype=object), return_inverse=True)
        known = set(unique.tolist()) if known_only else None
        variants = [swapper.variants(str(c), allowed=known) for c in unique]
        texts = sorted({v for row in variants for v in row if v is not None})
        index = {t: i for i, t in enumerate(texts)}
        table = np.array([[index[v] if v is not None else -1 for v in row] for row in variants],
                         dtype=np.int32).reshape(len(unique), len(swapper))
        return cls(texts, table[inverse.reshape(-1)])

    def write(self, cache: Any, path: Path) -> None:
        """npz with `embeddings` float16 [V, D] of the distinct variants and `rows` [M, G]."""
        embeddings = cache.lookup(self.texts) if self.texts else np.zeros((0, cache.dim), np.float16)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, embeddings=embeddings, rows=self.rows)


def swaps_path(aligned: Path, groups: list[list[str]], *, known_only: bool = False) -> Path:
    """Swapped-caption negatives beside a split's aligned embeddings, keyed by their settings."""
    key = stable_hash({"groups": groups, "known_only": known_only})
    return aligned.with_name(f"{aligned.stem}.swaps-{key}.npz")


def load_swaps(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings float16 [V, D], rows int64 [M, G]) written by `SwapPlan.write`."""
    if not path.is_file():
        raise GanT2IError(f"no swapped-caption negatives at {path}: prepare with text.swap_groups")
    with np.load(path) as z:
        return torch.from_numpy(z["embeddings"]), torch.from_numpy(z["rows"].astype(np.int64))


def tokens_path(aligned: Path) -> Path:
    """Token embeddings beside a split's aligned pooled embeddings."""
    return aligned.with_suffix(".tokens.npz")


def write_aligned_tokens(cache: Any, captions: list[str], path: Path) -> None:
    """Token embeddings of a split's distinct captions plus, per caption, its row among them.

    npz with `tokens` float16 [U, T, D], `mask` bool [U, T], `rows` int32 [M]: captions repeat
    (shapes: 2,400 distinct among 100,000), so this is far smaller than one row per caption.
    """
    unique, rows = np.unique(np.asarray(captions, dtype=object), return_inverse=True)
    tokens, mask = cache.lookup_tokens([str(c) for c in unique])
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, tokens=tokens, mask=mask, rows=rows.astype(np.int32))


def load_aligned_tokens(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens float16 [U, T, D], mask bool [U, T], rows int64 [M]) written by `write_aligned_tokens`."""
    if not path.is_file():
        raise GanT2IError(f"no token embeddings at {path}: prepare with text.tokens=true")
    with np.load(path) as z:
        return (torch.from_numpy(z["tokens"]), torch.from_numpy(z["mask"]),
                torch.from_numpy(z["rows"].astype(np.int64)))


def prepare(data: dict[str, Any], text: dict[str, Any], data_dir: str | Path, *,
            progress: bool = True) -> Prepared:
    """Build (or reuse) the image store and the embedding cache for a data + text config."""
    data_dir = Path(data_dir)
    store, built = prepare_store(data, data_dir, progress=progress)
    embeddings, encoded, dim, swaps = prepare_embeddings(store, text, data_dir, progress=progress)
    tokens = {s: tokens_path(p) for s, p in embeddings.items()} if text.get("tokens") else {}
    return Prepared(store=store, embeddings=embeddings, embedding_dim=dim, encoded=encoded,
                    built_store=built, tokens=tokens, swaps=swaps)


def summary(prepared: Prepared, seconds: float) -> str:
    """A short human summary of what prepare did."""
    lines = [f"store: {prepared.store.folder} ({'built' if prepared.built_store else 'reused'})"]
    for name, split in prepared.store.meta["splits"].items():
        skipped = split["bad_images"] + split["images_without_caption"]
        lines.append(f"  {name:<12} {split['images']:>7} images {split['captions']:>8} captions"
                     f" {skipped:>5} skipped")
    lines.append(f"embeddings: dim {prepared.embedding_dim}, {prepared.encoded} newly encoded,"
                 f" {next(iter(prepared.embeddings.values())).parent}")
    if prepared.swaps is not None:
        lines.append(f"swapped-caption negatives: {prepared.swaps}")
    lines.append(f"time: {seconds:.1f} s")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare")
@task
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    start = time.perf_counter()
    prepared = prepare(to_plain(cfg.data), to_plain(cfg.text), cfg.paths.data_dir,
                       progress=cfg.progress)
    print(summary(prepared, time.perf_counter() - start))


if __name__ == "__main__":
    main()
