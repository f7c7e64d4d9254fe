"""Run folders as pandas: config, `stats.jsonl`, `metrics.jsonl`, sample grids, checkpoints."""

from __future__ import annotations

import glob
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from gan_t2i.utils import GanT2IError, PathLike, flatten, read_jsonl

log = logging.getLogger(__name__)

GRID_RE = re.compile(r"grid-(\d+(?:\.\d+)?)kimg\.png$")
METRIC_COLUMNS = ("kimg", "split", "metric", "value", "ci_low", "ci_high", "chance", "std",
                  "num_images", "protocol", "checkpoint")
NO_SPLIT = "-"  # split of a metric record that names none
# Config keys that say where a run lives, not what it is: never a difference between runs.
IGNORED_PREFIXES = ("hydra", "paths")
IGNORED_LEAVES = ("output_dir", "out", "run_dir")
KIMG_TOL = 5e-4  # snapshot names carry kimg to 3 decimals


@dataclass
class Run:
    """One run folder, loaded."""

    path: Path
    name: str
    config: dict[str, Any]  # nested, as trained
    stats: pd.DataFrame  # one row per tick (stats.jsonl), sorted by kimg
    metrics: pd.DataFrame  # one row per number (metrics.jsonl); columns METRIC_COLUMNS at least
    grids: list[Path] = field(default_factory=list)  # samples/grid-*kimg.png, oldest first
    checkpoints: list[Path] = field(default_factory=list)  # snapshots oldest first, then last.pt

    @property
    def snapshots(self) -> dict[float, Path]:
        """Snapshot files by their kimg."""
        from gan_t2i.training.checkpoint import snapshot_kimg

        return {kimg: p for p in self.checkpoints if (kimg := snapshot_kimg(p)) is not None}

    def checkpoint_at(self, kimg: float, recorded: str | None = None) -> Path | None:
        """The checkpoint file that holds the state at `kimg`, if one is still on disk.

        A snapshot of that kimg is preferred (it never changes); else the file an evaluation
        recorded, but `last.pt` only while no newer snapshot shows it has moved on since.
        """
        snaps = self.snapshots
        for k, p in snaps.items():
            if abs(k - kimg) < KIMG_TOL:
                return p
        if recorded:
            path = Path(recorded)
            if not path.is_absolute() and not path.exists():
                path = self.path / "checkpoints" / path.name
            if path.is_file() and (path.name != "last.pt" or max(snaps, default=-1.0) <= kimg + KIMG_TOL):
                return path
        return None


def _kimg_of_grid(path: Path) -> float:
    m = GRID_RE.search(path.name)
    return float(m.group(1)) if m else math.inf


def _frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records)
    if "kimg" in df:
        df["kimg"] = pd.to_numeric(df["kimg"], errors="coerce")
        df = df.dropna(subset=["kimg"])
    return df


def read_stats(path: PathLike) -> pd.DataFrame:
    """`stats.jsonl` as a frame sorted by kimg (lines without a kimg are dropped)."""
    df = _frame(read_jsonl(path))
    return df.sort_values("kimg", kind="stable").reset_index(drop=True) if "kimg" in df else df


def read_metrics(path: PathLike) -> pd.DataFrame:
    """`metrics.jsonl` as a frame; a re-evaluation of the same (kimg, split, metric) replaces the old one."""
    records = [r for r in read_jsonl(path) if isinstance(r, dict) and "metric" in r and "value" in r]
    df = _frame(records)
    for col in METRIC_COLUMNS:
        if col not in df:
            df[col] = math.nan
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df = df.dropna(subset=["kimg", "value"])
    df["split"] = df["split"].fillna(NO_SPLIT).astype(str)
    df["metric"] = df["metric"].astype(str)
    if "time" in df:  # file order is append order; `time` breaks ties across merged files
        df = df.sort_values("time", kind="stable", na_position="first")
    df = df.drop_duplicates(subset=["kimg", "split", "metric"], keep="last")
    return df.sort_values(["metric", "split", "kimg"], kind="stable").reset_index(drop=True)


def read_config(path: PathLike) -> dict[str, Any]:
    """The run's config: `.hydra/config.yaml`, else the one saved in its newest checkpoint."""
    from omegaconf import OmegaConf

    path = Path(path)
    yaml_path = path / ".hydra" / "config.yaml"
    if yaml_path.is_file():
        return _resolve_saved(OmegaConf.load(yaml_path))
    from gan_t2i.training.checkpoint import load_latest

    try:
        found = load_latest(path / "checkpoints")
    except GanT2IError:
        found = None
    if found is None:
        log.warning("%s: no .hydra/config.yaml and no readable checkpoint: config unknown", path)
        return {}
    return dict(found[0].get("config") or {})


def _resolve_saved(cfg: Any) -> dict[str, Any]:
    """Hydra saves the config unresolved, and `${hydra:...}` (in `paths`) cannot resolve outside the
    app: resolve all but the ignored groups, which stay as saved."""
    from omegaconf import OmegaConf

    raw: dict[str, Any] = OmegaConf.to_container(cfg, resolve=False)  # type: ignore[assignment]
    for key in IGNORED_PREFIXES:
        cfg.pop(key, None)
    try:
        return {**raw, **OmegaConf.to_container(cfg, resolve=True)}  # type: ignore[dict-item]
    except Exception as e:  # an interpolation into an ignored group, or an unknown resolver
        log.debug("config left unresolved: %s", e)
        return raw


def load_run(path: PathLike, name: str | None = None) -> Run:
    """Load one run folder; a folder with neither stats.jsonl nor checkpoints raises GanT2IError."""
    from gan_t2i.training.checkpoint import list_snapshots

    path = Path(path)
    if not path.is_dir():
        raise GanT2IError(f"run folder not found: {path}")
    ckpt_dir = path / "checkpoints"
    last = [ckpt_dir / "last.pt"] if (ckpt_dir / "last.pt").is_file() else []
    checkpoints = list_snapshots(ckpt_dir) + last
    if not (path / "stats.jsonl").is_file() and not checkpoints:
        raise GanT2IError(f"not a run folder (no stats.jsonl and no checkpoints/): {path}")
    grids = sorted((path / "samples").glob("grid-*kimg.png"), key=_kimg_of_grid)
    return Run(path=path, name=name or path.name, config=read_config(path),
               stats=read_stats(path / "stats.jsonl"), metrics=read_metrics(path / "metrics.jsonl"),
               grids=grids, checkpoints=checkpoints)


def _expand(pattern: str) -> tuple[list[Path], bool]:
    if glob.has_magic(pattern):
        return [Path(p) for p in sorted(glob.glob(pattern))], True
    return [Path(pattern)], False


def _is_run(path: Path) -> bool:
    return path.is_dir() and ((path / "stats.jsonl").is_file() or any((path / "checkpoints").glob("*.pt")))


def _unique_names(paths: list[Path]) -> list[str]:
    """Folder names, with parent folders added until they are unique."""
    depth = 1
    while True:
        names = ["/".join(p.resolve().parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth > 8:
            return names
        depth += 1


def load_runs(paths_or_globs: PathLike | list[PathLike]) -> list[Run]:
    """Load runs from folders and glob patterns, in the order given (globs sorted).

    A folder named outright must be a run; what a glob matches that is not a run folder is
    skipped. Nothing matched raises GanT2IError.
    """
    items = [paths_or_globs] if isinstance(paths_or_globs, str | Path) else list(paths_or_globs)
    found: list[Path] = []
    for item in items:
        paths, is_glob = _expand(str(item))
        for p in paths:
            if is_glob and not _is_run(p):
                log.info("skipping %s: not a run folder", p)
                continue
            if p.resolve() not in {q.resolve() for q in found}:
                found.append(p)
    if not found:
        raise GanT2IError(f"no runs matched {', '.join(map(str, items)) or '[]'}")
    return [load_run(p, name) for p, name in zip(found, _unique_names(found))]


def _ignored(key: str) -> bool:
    return key.split(".")[0] in IGNORED_PREFIXES or key.split(".")[-1] in IGNORED_LEAVES


def config_differences(runs: list[Run]) -> pd.DataFrame:
    """Config keys (dotted) whose values differ between runs: index key, a column per run.

    Where a run lacks a key its cell is `<missing>`. Paths, output folders and `hydra` are ignored.
    """
    flat = [flatten(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f if not _ignored(k)})
    missing = "<missing>"
    rows = {}
    for key in keys:
        values = [f.get(key, missing) for f in flat]
        if len({repr(v) for v in values}) > 1:
            rows[key] = [str(v) if isinstance(v, list | tuple) else v for v in values]
    df = pd.DataFrame.from_dict(rows, orient="index", columns=[r.name for r in runs], dtype=object)
    df.index.name = "key"
    return df
