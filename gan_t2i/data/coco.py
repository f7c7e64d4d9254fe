"""Read COCO-captions datasets (MS-COCO or any JSON with the same keys) with pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from gan_t2i.utils import GanT2IError, PathLike

# Never let PIL silently pad a truncated JPEG with grey: a truncated file is a bad image.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_REQUIRED = {
    "images": ("id", "file_name"),
    "annotations": ("id", "image_id", "caption"),
}


@dataclass
class CaptionRecord:
    """One image and its captions, as listed by a COCO-captions JSON."""

    image_id: int
    file_name: str
    captions: list[str]
    ann_ids: list[int]
    attributes: dict[str, Any] | None = None


@dataclass
class CaptionIndex:
    """What a COCO-captions JSON lists, with the counts of what was dropped."""

    records: list[CaptionRecord]
    images_without_caption: int = 0
    empty_captions: int = 0
    orphan_captions: int = 0  # captions whose image_id names no image
    skipped_names: list[str] = field(default_factory=list)


def load_json(path: PathLike) -> dict[str, Any]:
    """Load and validate a COCO-captions JSON; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise GanT2IError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GanT2IError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise GanT2IError(f"{path}: expected a JSON object with 'images' and 'annotations'")
    for key, fields in _REQUIRED.items():
        if key not in data:
            raise GanT2IError(f"{path}: missing key '{key}'")
        if not isinstance(data[key], list):
            raise GanT2IError(f"{path}: key '{key}' must be a list")
        for i, item in enumerate(data[key]):
            missing = [k for k in fields if not isinstance(item, dict) or k not in item]
            if missing:
                raise GanT2IError(f"{path}: {key}[{i}] is missing key '{missing[0]}'")
    return data


def _normalise_caption(text: Any) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def read_captions(path: PathLike) -> CaptionIndex:
    """List the images of a COCO-captions JSON with their captions, in image-id order.

    Images without any (non-empty) caption are dropped and counted.
    """
    from pycocotools.coco import COCO

    data = load_json(path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    index = CaptionIndex(records=[])
    known = set(coco.imgs)
    index.orphan_captions = sum(1 for a in data["annotations"] if a["image_id"] not in known)
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        captions, ann_ids = [], []
        for ann in sorted(coco.imgToAnns.get(image_id, []), key=lambda a: a["id"]):
            text = _normalise_caption(ann["caption"])
            if not text:
                index.empty_captions += 1
                continue
            captions.append(text)
            ann_ids.append(int(ann["id"]))
        if not captions:
            index.images_without_caption += 1
            index.skipped_names.append(str(info["file_name"]))
            continue
        index.records.append(
            CaptionRecord(
                image_id=int(image_id),
                file_name=str(info["file_name"]),
                captions=captions,
                ann_ids=ann_ids,
                attributes=info.get("attributes"),
            )
        )
    return index


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (L, P, CMYK, RGBA, I;16, ...) to RGB."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":  # palette images may carry transparency; go through RGBA
        image = image.convert("RGBA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float32)
        scale = 255.0 / max(float(arr.max()), 1.0) if arr.max() > 255 else 1.0
        image = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def center_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    """Crop the long side to a centred square, then an antialiased bicubic resize (as clean-fid)."""
    w, h = image.size
    side = min(w, h)
    if w != h:
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), resample=Image.BICUBIC)
    return image


def load_image(path: PathLike, resolution: int) -> np.ndarray:
    """Decode one image file to uint8 [resolution, resolution, 3]; raises OSError/ValueError if bad."""
    with Image.open(path) as image:
        image.load()
        image = center_crop_resize(to_rgb(image), resolution)
        array = np.asarray(image, dtype=np.uint8)
    if array.shape != (resolution, resolution, 3):
        raise ValueError(f"unexpected decoded shape {array.shape}")
    return array


def try_load_image(path: PathLike, resolution: int) -> tuple[np.ndarray | None, str | None]:
    """Like `load_image`, but returns (None, reason) for a missing or undecodable file."""
    path = Path(path)
    if not path.is_file():
        return None, "missing"
    try:
        return load_image(path, resolution), None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return None, f"undecodable ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
