"""Checkpoints: state dicts and plain data only, written atomically, loaded with weights_only.

Layout in a run folder::

    checkpoints/last.pt                 newest state (rewritten at every snapshot)
    checkpoints/snapshot-000120.000kimg.pt  every `snapshot_kimg`, the newest `keep` of them
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import gan_t2i
from gan_t2i.utils import GanT2IError, PathLike, atomic_path

log = logging.getLogger(__name__)

SNAPSHOT_RE = re.compile(r"snapshot-(\d+\.\d+)kimg\.pt$")


def code_version() -> str:
    """Package version plus the git commit when the code runs from a checkout."""
    version = gan_t2i.__version__
    try:
        root = Path(gan_t2i.__file__).resolve().parent.parent
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
        if sha:
            version += f"+{sha}"
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def rng_state() -> dict[str, Any]:
    """Every RNG the training step draws from, as plain data."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_finite(module: nn.Module) -> bool:
    """True when every parameter and floating buffer is finite."""
    tensors = [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def save_checkpoint(path: PathLike, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a temp file in the same folder, then rename."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def copy_checkpoint(src: PathLike, dst: PathLike) -> None:
    """Copy a checkpoint atomically (a real copy: damage to one file never reaches the other)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def load_checkpoint(path: PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; a bad file raises one clear GanT2IError."""
    path = Path(path)
    if not path.is_file():
        raise GanT2IError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, wrong format, unsafe pickle: all one answer
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise GanT2IError(f"cannot read checkpoint {path}: {first}") from None


def snapshot_name(cur_nimg: int) -> str:
    """File name of the snapshot taken at `cur_nimg` images."""
    return f"snapshot-{cur_nimg / 1000:010.3f}kimg.pt"


def snapshot_kimg(path: PathLike) -> float | None:
    """The kimg in a snapshot's file name, or None for any other file (last.pt, ...)."""
    m = SNAPSHOT_RE.search(Path(path).name)
    return float(m.group(1)) if m else None


def list_snapshots(folder: PathLike) -> list[Path]:
    """Snapshots in a checkpoints folder, oldest first."""
    found = [(kimg, p) for p in Path(folder).glob("snapshot-*kimg.pt")
             if (kimg := snapshot_kimg(p)) is not None]
    return [p for _, p in sorted(found)]


def prune_snapshots(folder: PathLike, keep: int) -> None:
    """Delete all but the newest `keep` snapshots (keep <= 0 keeps all)."""
    if keep > 0:
        for path in list_snapshots(folder)[:-keep]:
            path.unlink(missing_ok=True)


def load_latest(folder: PathLike, map_location: str | torch.device = "cpu"
                ) -> tuple[dict[str, Any], Path] | None:
    """Newest readable checkpoint in `folder`: last.pt, else snapshots newest first.

    A corrupt file is reported with a warning and skipped, so a damaged last.pt falls back to
    the previous snapshot instead of losing the run.
    """
    folder = Path(folder)
    candidates = [folder / "last.pt"] + list_snapshots(folder)[::-1]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            return load_checkpoint(path, map_location), path
        except GanT2IError as e:
            log.warning("%s; trying an older checkpoint", e)
    return None


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """`load_state_dict` whose error for another architecture lists the mismatched keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("shape mismatch", shapes)):
            if keys:
                more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
                parts.append(f"{label}: {', '.join(keys[:4])}{more}")
        raise GanT2IError(f"{what} checkpoint is from a different architecture: "
                          + "; ".join(parts))
    module.load_state_dict(state)


def kimg_of(state: dict[str, Any]) -> float:
    """Training progress of a checkpoint in kimg."""
    return state["cur_nimg"] / 1000.0

