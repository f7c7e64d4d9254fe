"""The image store: decoded images at the training resolution plus the caption table.

Layout of one store (one folder per split)::

    <store>/store.json                  settings, counts, skipped files (written last)
    <store>/<split>/images.npy          uint8 [N, H, W, 3], memory-mapped when read
    <store>/<split>/captions.json       {"text": [...], "image_index": [...], "ann_id": [...]}
    <store>/<split>/images.json         [{"id", "file_name", "attributes"?}, ...] per stored image

A store is built in a hidden temporary folder and renamed into place when complete, so an
interrupted prepare never leaves a store that later counts as complete.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from gan_t2i.data.coco import CaptionIndex, read_captions, try_load_image
from gan_t2i.utils import GanT2IError, PathLike, atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

STORE_FORMAT = 1


@dataclass(frozen=True)
class SplitSource:
    """Where one split's captions and images come from."""

    annotations: Path
    images: Path


@dataclass
class SplitReport:
    """What building one split kept and skipped."""

    images: int = 0
    captions: int = 0
    bad_images: int = 0
    images_without_caption: int = 0
    empty_captions: int = 0
    bad_names: list[str] | None = None


class StoreSplit:
    """Read access to one split of a built store (images memory-mapped)."""

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)
        if not (self.folder / "images.npy").is_file():
            raise GanT2IError(f"image store split not found: {self.folder}")
        self.images = np.load(self.folder / "images.npy", mmap_mode="r")  # [N, H, W, 3] uint8
        with open(self.folder / "captions.json", encoding="utf-8") as f:
            table = json.load(f)
        self.captions: list[str] = table["text"]
        self.caption_image = np.asarray(table["image_index"], dtype=np.int64)  # [M]
        self.caption_ann_id = np.asarray(table["ann_id"], dtype=np.int64)  # [M]

    @property
    def name(self) -> str:
        """The split's name (train, val, ...)."""
        return self.folder.name

    @property
    def num_images(self) -> int:
        """Number of stored images."""
        return int(self.images.shape[0])

    @property
    def num_captions(self) -> int:
        """Number of captions (each points at one stored image)."""
        return len(self.captions)

    @property
    def resolution(self) -> int:
        """Side of the stored square images in pixels."""
        return int(self.images.shape[1])

    @cached_property
    def image_meta(self) -> list[dict[str, Any]]:
        """Per stored image: COCO id, file name and attributes when the JSON had them."""
        with open(self.folder / "images.json", encoding="utf-8") as f:
            return json.load(f)

    def first_captions(self, num_images: int) -> tuple[np.ndarray, np.ndarray]:
        """(caption rows, image rows) of the first caption of each of the first `num_images` images."""
        first: dict[int, int] = {}
        for i, img in enumerate(self.caption_image.tolist()):
            first.setdefault(img, i)
            if len(first) >= num_images:
                break
        return np.array(list(first.values()), dtype=np.int64), np.array(list(first), dtype=np.int64)

    def captions_of_image(self, image_index: int) -> list[int]:
        """Caption indices that describe one image."""
        return np.flatnonzero(self.caption_image == image_index).tolist()


class ImageStore:
    """A complete store folder: its splits and the settings it was built with."""

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)
        meta_path = self.folder / "store.json"
        if not meta_path.is_file():
            raise GanT2IError(f"no complete image store at {self.folder} (run gan_t2i.prepare)")
        with open(meta_path, encoding="utf-8") as f:
            self.meta: dict[str, Any] = json.load(f)
        self._splits: dict[str, StoreSplit] = {}

    @property
    def splits(self) -> list[str]:
        """Names of the splits in this store."""
        return list(self.meta["splits"])

    def split(self, name: str) -> StoreSplit:
        """Open one split (cached)."""
        if name not in self.meta["splits"]:
            raise GanT2IError(f"split '{name}' not in store {self.folder} (has {self.splits})")
        if name not in self._splits:
            self._splits[name] = StoreSplit(self.folder / name)
        return self._splits[name]


def is_complete(folder: PathLike) -> bool:
    """True when `folder` holds a finished store."""
    return (Path(folder) / "store.json").is_file()


def _decode_chunk(args: tuple[list[str], int]) -> list[tuple[np.ndarray | None, str | None]]:
    paths, resolution = args
    return [try_load_image(p, resolution) for p in paths]


def _decoded(paths: list[str], resolution: int, workers: int, progress: bool, desc: str
             ) -> Iterator[tuple[np.ndarray | None, str | None]]:
    """Decode images in order, in a process pool when `workers` > 1."""
    chunk = 256
    chunks = [(paths[i:i + chunk], resolution) for i in range(0, len(paths), chunk)]
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False)
    try:
        if workers > 1 and len(paths) > chunk:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for results in pool.map(_decode_chunk, chunks):
                    bar.update(len(results))
                    yield from results
        else:
            for args in chunks:
                results = _decode_chunk(args)
                bar.update(len(results))
                yield from results
    finally:
        bar.close()


def build_split(out: Path, source: SplitSource, *, resolution: int, on_bad_image: str,
                workers: int = 1, progress: bool = True) -> SplitReport:
    """Decode one split into `out` (a folder inside the store being built)."""
    index: CaptionIndex = read_captions(source.annotations)
    records = index.records
    out.mkdir(parents=True)
    paths = [str(source.images / r.file_name) for r in records]
    images = np.lib.format.open_memmap(out / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=(len(records), resolution, resolution, 3))
    kept: list[int] = []
    bad: list[str] = []
    decoded = _decoded(paths, resolution, workers, progress, f"prepare {out.name}")
    for i, (array, reason) in enumerate(decoded):
        if array is None:
            if on_bad_image == "error":
                raise GanT2IError(f"bad image ({reason}): {paths[i]}")
            bad.append(f"{paths[i]} ({reason})")
            continue
        images[len(kept)] = array
        kept.append(i)
    images.flush()
    del images
    if len(kept) < len(records):  # compact: drop the rows of skipped images
        full = np.load(out / "images.npy", mmap_mode="r")
        compact = np.array(full[: len(kept)])
        del full
        np.save(out / "images.npy", compact)
    _write_tables(out, [records[i] for i in kept])
    report = SplitReport(images=len(kept), bad_images=len(bad), bad_names=bad,
                         images_without_caption=index.images_without_caption,
                         empty_captions=index.empty_captions)
    report.captions = sum(len(records[i].captions) for i in kept)
    return report


def _write_tables(out: Path, records: list) -> None:
    text, image_index, ann_id, meta = [], [], [], []
    for j, record in enumerate(records):
        text.extend(record.captions)
        image_index.extend([j] * len(record.captions))
        ann_id.extend(record.ann_ids)
        entry: dict[str, Any] = {"id": record.image_id, "file_name": record.file_name}
        if record.attributes is not None:
            entry["attributes"] = record.attributes
        meta.append(entry)
    with open(out / "captions.json", "w", encoding="utf-8") as f:
        json.dump({"text": text, "image_index": image_index, "ann_id": ann_id}, f)
    with open(out / "images.json", "w", encoding="utf-8") as f:
        json.dump(meta, f)


def build_store(folder: PathLike, sources: dict[str, SplitSource], *, resolution: int,
                on_bad_image: str = "skip", workers: int = 1, progress: bool = True,
                settings: dict[str, Any] | None = None) -> dict[str, SplitReport]:
    """Build a store for `sources` into `folder` atomically; returns a report per split."""
    reports: dict[str, SplitReport] = {}
    workers = max(1, min(workers, os.cpu_count() or 1))
    with atomic_dir(folder) as tmp:
        for split, source in sources.items():
            reports[split] = build_split(tmp / split, source, resolution=resolution,
                                         on_bad_image=on_bad_image, workers=workers,
                                         progress=progress)
        atomic_write_json(tmp / "store.json", {
            "format": STORE_FORMAT,
            "resolution": resolution,
            "splits": {k: {kk: vv for kk, vv in vars(r).items()} for k, r in reports.items()},
            "settings": settings or {},
        })
    _warn_skipped(reports)
    return reports


def _warn_skipped(reports: dict[str, SplitReport]) -> None:
    """One summary warning naming what was skipped (never one line per file)."""
    for split, r in reports.items():
        if r.bad_images:
            names = ", ".join(r.bad_names[:5]) + (" ..." if r.bad_images > 5 else "")
            log.warning("%s: skipped %d bad image(s): %s", split, r.bad_images, names)
        if r.images_without_caption or r.empty_captions:
            log.warning("%s: skipped %d image(s) without a caption and %d empty caption(s)",
                        split, r.images_without_caption, r.empty_captions)
