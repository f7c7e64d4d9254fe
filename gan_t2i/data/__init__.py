"""Datasets: the shapes generator, the COCO-captions reader, the image store and the Dataset."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gan_t2i.data.dataset import ImageCaptionDataset, InfiniteSampler, RankSlice, collate
from gan_t2i.data.store import ImageStore, SplitSource, StoreSplit, build_store, is_complete
from gan_t2i.utils import GanT2IError, stable_hash

log = logging.getLogger(__name__)

__all__ = [
    "ImageCaptionDataset",
    "ImageStore",
    "InfiniteSampler",
    "RankSlice",
    "SplitSource",
    "StoreSplit",
    "collate",
    "prepare_store",
    "store_folder",
]


def _shapes_settings(data: dict[str, Any]) -> dict[str, Any]:
    return {"name": "shapes", "resolution": data["resolution"], **data["shapes"]}


def _coco_settings(data: dict[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {"name": data["name"], "resolution": data["resolution"]}
    for key in ("annotations", "images", "val_annotations", "val_images"):
        value = data.get(key)
        if value in (None, "???"):
            if key in ("annotations", "images"):
                raise GanT2IError(f"data.{key} is required for data={data['name']}")
            continue
        path = Path(value).expanduser().resolve()
        if not path.exists():
            raise GanT2IError(f"data.{key} does not exist: {path}")
        stat = path.stat()
        # A changed annotation file must give a new store, so its size and mtime are in the key.
        settings[key] = {"path": str(path), "size": stat.st_size if path.is_file() else None,
                         "mtime": int(stat.st_mtime) if path.is_file() else None}
    return settings


def data_settings(data: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide a store's content (its cache key)."""
    if data["name"] == "shapes":
        return _shapes_settings(data)
    return _coco_settings(data)


def store_folder(data: dict[str, Any], data_dir: str | Path) -> Path:
    """The store folder for a data config: `<data_dir>/stores/<name>-<res>px-<hash>`."""
    settings = data_settings(data)
    return Path(data_dir) / "stores" / f"{data['name']}-{data['resolution']}px-{stable_hash(settings)}"


def _shapes_sources(data: dict[str, Any], data_dir: Path, progress: bool) -> dict[str, SplitSource]:
    from gan_t2i.data.shapes import generate_shapes

    s = data["shapes"]
    raw = data_dir / "raw" / f"shapes-{data['resolution']}px-{stable_hash(_shapes_settings(data))}"
    if not (raw / "meta.json").is_file():
        log.info("generating shapes into %s", raw)
        generate_shapes(raw, resolution=data["resolution"], num_train=s["num_train"],
                        num_val=s["num_val"], num_val_heldout=s["num_val_heldout"],
                        heldout_fraction=s["heldout_fraction"],
                        captions_per_image=s["captions_per_image"], supersample=s["supersample"],
                        jitter=s["jitter"], seed=s["seed"], workers=data.get("workers"),
                        progress=progress)
    splits = {"train": s["num_train"], "val": s["num_val"], "val_heldout": s["num_val_heldout"]}
    return {name: SplitSource(raw / "annotations" / f"captions_{name}.json", raw / name)
            for name, count in splits.items() if count > 0}


def _coco_sources(data: dict[str, Any]) -> dict[str, SplitSource]:
    sources = {"train": SplitSource(Path(data["annotations"]), Path(data["images"]))}
    if data.get("val_annotations"):
        if not data.get("val_images"):
            raise GanT2IError("data.val_images is required when data.val_annotations is set")
        sources["val"] = SplitSource(Path(data["val_annotations"]), Path(data["val_images"]))
    return sources


def prepare_store(data: dict[str, Any], data_dir: str | Path, *, progress: bool = True
                  ) -> tuple[ImageStore, bool]:
    """Build the store for a data config unless a complete one exists; returns (store, built)."""
    data_dir = Path(data_dir)
    folder = store_folder(data, data_dir)
    if is_complete(folder):
        return ImageStore(folder), False
    if data["name"] == "shapes":
        sources = _shapes_sources(data, data_dir, progress)
    else:
        sources = _coco_sources(data)
    build_store(folder, sources, resolution=data["resolution"],
                on_bad_image=str(data.get("on_bad_image", "skip")),
                workers=int(data.get("workers") or 1), progress=progress,
                settings=data_settings(data))
    return ImageStore(folder), True
