"""Caption-embedding cache: captions are encoded once per text-model identity and settings.

Layout of one cache folder, `<root>/<model slug>-<hash of identity and settings>/`:

    identity.json           the text-model identity and cache settings the folder is keyed by
    shard-00000.npy         float16 [n, D] L2-normalised pooled embeddings
    tokens-00000.npy        float16 [n, max_tokens, D] token embeddings   (tokens=True only)
    mask-00000.npy          bool [n, max_tokens] token mask               (tokens=True only)
    keys-00000.json         list of the n caption hashes (`text_hash`), written LAST
    shard-00001.npy ...     later builds append new shards; old ones are never rewritten

A shard counts only once its keys file exists, so a build killed midway leaves nothing that counts
(completed shards of a long build do count: the next build resumes after them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from gan_t2i.utils import (
    GanT2IError,
    PathLike,
    atomic_path,
    atomic_write_json,
    stable_hash,
    text_hash,
)

CACHE_FORMAT = 1
_KEYS_RE = re.compile(r"^keys-(\d{5,})\.json$")


class CaptionEncoder(Protocol):
    """What the cache needs from an encoder (`SentenceEncoder` or a test double)."""

    def encode(self, texts: list[str]) -> np.ndarray: ...

    def encode_tokens(
        self, texts: list[str], *, pad_to: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class EmbeddingCache:
    """Float16 caption embeddings on disk, keyed by caption hash; built incrementally.

    Args:
        root: folder holding one sub-folder per (text-model identity, settings).
        identity: plain dict identifying the text model (`SentenceEncoder.identity` or
            `model_identity(...)`, which needs no model load).
        tokens: also store token embeddings and masks (for cross-attention conditioning).
        max_tokens: token positions stored per caption when `tokens` is set (longer are cut).
    """

    def __init__(
        self,
        root: PathLike,
        identity: dict[str, Any],
        *,
        tokens: bool = False,
        max_tokens: int = 32,
    ) -> None:
        if tokens and max_tokens < 1:
            raise GanT2IError(f"max_tokens must be >= 1 when tokens=True, got {max_tokens}")
        self.identity = dict(identity)
        self.tokens = tokens
        self.max_tokens = max_tokens
        self.settings = {"format": CACHE_FORMAT, "tokens": tokens}
        if tokens:  # the pooled-only cache does not depend on max_tokens
            self.settings["max_tokens"] = max_tokens
        key = stable_hash({"identity": self.identity, "settings": self.settings})
        self.path = Path(root) / f"{_slug(self.identity)}-{key}"
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / "identity.json").exists():
            atomic_write_json(
                self.path / "identity.json", {"identity": self.identity, "settings": self.settings}
            )
        self._index: dict[str, tuple[int, int]] = {}  # caption hash -> (slot, row)
        self._pooled: list[np.ndarray] = []  # per loaded shard: memmap [n, D]
        self._token_arrays: list[tuple[np.ndarray, np.ndarray]] = []  # ([n, T, D], [n, T])
        self._loaded: set[int] = set()
        self.refresh()

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r}, captions={len(self)}, dim={self.dim})"

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, caption: str) -> bool:
        return text_hash(caption) in self._index

    @property
    def dim(self) -> int | None:
        """Embedding width D (None while the cache is empty)."""
        return int(self._pooled[0].shape[1]) if self._pooled else None

    def refresh(self) -> None:
        """Open shards written since the last look (by this or another process)."""
        for shard_id in sorted(self._shard_ids() - self._loaded):
            keys = json.loads((self.path / f"keys-{shard_id:05d}.json").read_text("utf-8"))
            pooled = self._open(f"shard-{shard_id:05d}.npy", (len(keys), None))
            if self.tokens:
                tokens = self._open(
                    f"tokens-{shard_id:05d}.npy", (len(keys), self.max_tokens, None)
                )
                mask = self._open(f"mask-{shard_id:05d}.npy", (len(keys), self.max_tokens))
                self._token_arrays.append((tokens, mask))
            slot = len(self._pooled)
            self._pooled.append(pooled)
            for row, key in enumerate(keys):
                self._index.setdefault(key, (slot, row))
            self._loaded.add(shard_id)

    def missing(self, captions: list[str]) -> list[str]:
        """Unique captions not yet in the cache, in order of first appearance."""
        seen: set[str] = set()
        out = []
        for caption in captions:
            key = text_hash(caption)
            if key not in self._index and key not in seen:
                seen.add(key)
                out.append(caption)
        return out

    def build(
        self,
        captions: list[str],
        encoder_factory: Callable[[], CaptionEncoder],
        *,
        batch_size: int = 256,
        progress: bool = True,
        shard_size: int = 65536,
    ) -> int:
        """Encode the captions not yet cached; returns how many were encoded.

        The encoder is built only if something is missing. Unique missing captions are sorted by
        (length, text), encoded in batches in that order and stored in shards of `shard_size`.
        """
        with self._lock():
            self.refresh()
            todo = sorted(self.missing(captions), key=lambda c: (len(c), c))
            if not todo:
                return 0
            encoder = encoder_factory()
            desc = f"encoding captions ({self.path.name})"
            with tqdm(total=len(todo), desc=desc, unit="caption", disable=not progress) as bar:
                for start in range(0, len(todo), shard_size):
                    chunk = todo[start : start + shard_size]
                    self._write_shard(chunk, self._encode(encoder, chunk, batch_size, bar))
            self.refresh()
            return len(todo)

    def lookup(self, captions: list[str]) -> np.ndarray:
        """Pooled embeddings float16 `[N, D]`, row i = captions[i]; KeyError names a missing one."""
        slots, rows = self._locate(captions)
        return _gather(self._pooled, slots, rows, (self.dim or 0,), np.float16)

    def lookup_tokens(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token embeddings float16 `[N, max_tokens, D]` and mask bool `[N, max_tokens]`."""
        if not self.tokens:
            raise GanT2IError(
                f"cache {self.path} holds no token embeddings; open it with tokens=True"
            )
        slots, rows = self._locate(captions)
        tokens = [t for t, _ in self._token_arrays]
        masks = [m for _, m in self._token_arrays]
        shape = (self.max_tokens, self.dim or 0)
        return (
            _gather(tokens, slots, rows, shape, np.float16),
            _gather(masks, slots, rows, (self.max_tokens,), np.bool_),
        )

    def _locate(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        slots = np.empty(len(captions), dtype=np.int64)
        rows = np.empty(len(captions), dtype=np.int64)
        refreshed = False
        for i, caption in enumerate(captions):
            key = text_hash(caption)
            if key not in self._index and not refreshed:
                self.refresh()  # another process may have added shards since we opened
                refreshed = True
            loc = self._index.get(key)
            if loc is None:
                raise KeyError(f"caption not in the embedding cache {self.path}: {caption!r}")
            slots[i], rows[i] = loc
        return slots, rows

    def _encode(
        self, encoder: CaptionEncoder, texts: list[str], batch_size: int, bar: tqdm
    ) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {"shard": [], "tokens": [], "mask": []}
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            if self.tokens:
                pooled, tokens, mask = encoder.encode_tokens(batch, pad_to=self.max_tokens)
                dim = np.shape(pooled)[-1]
                parts["tokens"].append(_to_float16(tokens, (len(batch), self.max_tokens, dim)))
                parts["mask"].append(
                    _checked(np.asarray(mask, bool), (len(batch), self.max_tokens))
                )
            else:
                pooled = encoder.encode(batch)
            parts["shard"].append(_to_float16(pooled, (len(batch), self.dim)))
            bar.update(len(batch))
        return {name: np.concatenate(arrays) for name, arrays in parts.items() if arrays}

    def _write_shard(self, texts: list[str], arrays: dict[str, np.ndarray]) -> None:
        shard_id = max(self._shard_ids(), default=-1) + 1
        for name, array in arrays.items():  # a stray file of this id (killed build) is replaced
            with atomic_path(self.path / f"{name}-{shard_id:05d}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, array)
        # Last: from here on the shard counts.
        atomic_write_json(self.path / f"keys-{shard_id:05d}.json", [text_hash(t) for t in texts])

    def _shard_ids(self) -> set[int]:
        return {int(m.group(1)) for p in self.path.iterdir() if (m := _KEYS_RE.match(p.name))}

    def _open(self, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
        try:
            array = np.load(self.path / name, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise GanT2IError(
                f"embedding cache {self.path} is damaged ({name}: {err}); "
                "delete that folder and encode again"
            ) from None
        if not _shape_matches(array.shape, shape):
            raise GanT2IError(
                f"embedding cache {self.path} is damaged ({name} has shape "
                f"{array.shape}, expected {shape}); delete that folder"
            )
        return array

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Exclusive lock on the folder, so two processes never write the same shard id."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        with open(self.path / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def write_aligned(
    cache: EmbeddingCache, captions: list[str], out_path: PathLike, *, chunk_rows: int = 16384
) -> dict[str, Any]:
    """Write float16 `[len(captions), D]` `.npy` with row i = captions[i], plus its statistics.

    The statistics (mean embedding and per-dimension std over these rows, float64 accumulation)
    go to `<stem>.stats.json` beside it and are returned. Both files are written atomically.
    """
    out_path = Path(out_path)
    n, dim = len(captions), cache.dim
    if dim is None:
        if n:
            cache.lookup(captions[:1])  # raises KeyError naming the first caption
        raise GanT2IError(f"embedding cache {cache.path} is empty; build it first")
    count, mean, m2 = 0, np.zeros(dim), np.zeros(dim)
    with atomic_path(out_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, dim))
        for start in range(0, n, chunk_rows):
            block = cache.lookup(captions[start : start + chunk_rows])
            out[start : start + len(block)] = block
            count, mean, m2 = _merge_moments(count, mean, m2, block.astype(np.float64))
        out.flush()
        del out
    stats = {
        "num_rows": n,
        "dim": dim,
        "captions_hash": captions_hash(captions),
        "cache": cache.path.name,
        "identity": cache.identity,
        "mean": mean.tolist(),
        "std": np.sqrt(m2 / max(count, 1)).tolist(),
    }
    atomic_write_json(aligned_stats_path(out_path), stats)
    return stats


def load_aligned(path: PathLike, *, mmap: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Open an aligned embedding file (memory-mapped) and its statistics (mean/std as float32)."""
    path = Path(path)
    stats_path = aligned_stats_path(path)
    if not path.exists() or not stats_path.exists():
        raise GanT2IError(
            f"aligned embeddings {path} (or {stats_path.name}) not found; encode first"
        )
    array = np.load(path, mmap_mode="r" if mmap else None)
    stats = json.loads(stats_path.read_text("utf-8"))
    if (stats["num_rows"], stats["dim"]) != tuple(array.shape):
        raise GanT2IError(
            f"{stats_path} describes {stats['num_rows']}x{stats['dim']} but {path} "
            f"is {array.shape[0]}x{array.shape[1]}; encode again"
        )
    stats["mean"] = np.asarray(stats["mean"], dtype=np.float32)
    stats["std"] = np.asarray(stats["std"], dtype=np.float32)
    return array, stats


def aligned_stats_path(out_path: PathLike) -> Path:
    """Where `write_aligned` puts the statistics of `out_path`: `<stem>.stats.json` beside it."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.stats.json")


def captions_hash(captions: list[str], length: int = 16) -> str:
    """Hash of an ordered caption list (to check an aligned file matches a caption table)."""
    h = hashlib.blake2b(digest_size=16)
    for caption in captions:
        h.update(text_hash(caption).encode("ascii"))
    return h.hexdigest()[:length]


def _slug(identity: dict[str, Any], limit: int = 40) -> str:
    """Filesystem-safe short model name: 'org/All-MiniLM-L6-v2' → 'all-minilm-l6-v2'."""
    name = str(identity.get("name", "model")).rstrip("/\\").replace("\\", "/").split("/")[-1]
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return slug[:limit] or "model"


def _gather(
    arrays: list[np.ndarray], slots: np.ndarray, rows: np.ndarray, shape: tuple, dtype: Any
) -> np.ndarray:
    """Rows `rows[i]` of `arrays[slots[i]]`, stacked; reads only those rows of each memmap."""
    out = np.empty((len(rows), *shape), dtype=dtype)
    for slot in np.unique(slots):
        where = np.nonzero(slots == slot)[0]
        out[where] = arrays[slot][rows[where]]
    return out


def _merge_moments(
    count: int, mean: np.ndarray, m2: np.ndarray, block: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan et al. parallel update of (count, mean, sum of squared deviations) with a block."""
    n = len(block)
    if n == 0:
        return count, mean, m2
    block_mean = block.mean(axis=0)
    block_m2 = ((block - block_mean) ** 2).sum(axis=0)
    total = count + n
    delta = block_mean - mean
    return total, mean + delta * (n / total), m2 + block_m2 + delta**2 * (count * n / total)


def _to_float16(array: np.ndarray, shape: tuple[int | None, ...]) -> np.ndarray:
    array = _checked(np.asarray(array), shape)
    if not np.isfinite(array).all():
        raise GanT2IError("the text encoder returned non-finite embeddings")
    return array.astype(np.float16)


def _checked(array: np.ndarray, shape: tuple[int | None, ...]) -> np.ndarray:
    if not _shape_matches(array.shape, shape):
        raise GanT2IError(f"text encoder returned shape {array.shape}, expected {shape}")
    return array


def _shape_matches(actual: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(actual) == len(expected) and all(
        e is None or a == e for a, e in zip(actual, expected)
    )
