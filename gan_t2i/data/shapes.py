"""Procedural coloured-shape dataset with paraphrased captions, written in MS-COCO captions format.

Each image holds one object (shape, colour, size, position) on a dark grey background. A few
colour-shape pairs are held out of `train` and `val` and appear only in `val_heldout`, so
compositional generalisation can be measured. Everything about image i (attributes, geometry,
captions) comes from its own generator seeded by `(seed, split, i)`: the output does not depend on
the number of workers, and the scene does not depend on the resolution.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from gan_t2i.utils import PathLike, atomic_dir, atomic_write_json, stable_hash

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "cyan")
# Saturated and far apart in RGB (and in hue), and all much brighter than the background (<= 45).
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 80, 255),
    "yellow": (245, 225, 30),
    "purple": (170, 50, 230),
    "cyan": (30, 225, 235),
}
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right", "center")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": COLORS,
    "size": SIZES,
    "position": POSITIONS,
}
SPLITS: tuple[str, ...] = ("train", "val", "val_heldout")

# Object centre (x, y) as fractions of the side; y grows downwards as in image coordinates.
POSITION_XY: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
# Object extent (bounding box side) as a fraction of the image side, before the +-10% jitter.
SIZE_EXTENT: dict[str, float] = {"small": 0.22, "large": 0.42}
SIZE_JITTER = 0.10
BACKGROUND_RANGE = (15, 45)  # grey levels, inclusive; far darker than any COLOR_RGB
_EDGE_MARGIN = 0.01  # keeps jittered large objects from touching the image border
_HELDOUT_STREAM = 104729  # seeds the held-out choice apart from any per-image stream
_CHUNK = 250  # images per worker task: large enough to amortise the task overhead
_FORMAT_VERSION = 1

# Caption templates. Slots: {size} {color} {shape} {pos} ("top left"), {in_pos} ("in the top
# left"), {at_pos} ("at the top left"), {in_region} ("in the top left corner" or "in the center of
# the image"). Every template names all four attributes with their exact vocabulary words.
TEMPLATES: tuple[str, ...] = (
    "a {size} {color} {shape} {in_pos}",
    "there is a {color} {shape} {in_pos}, and it is {size}",
    "{in_region} sits a {size} {color} {shape}",
    "a {color} {shape}, {size}, located {at_pos}",
    "{size} {color} {shape}, {pos}",
    "a picture of a {size} {color} {shape} {in_pos}",
    "the {shape} {in_pos} is {color} and {size}",
    "a {size} {shape} colored {color}, placed {in_pos}",
    "{in_region}, a {color} {shape} that is {size}",
    "an image showing one {size} {color} {shape} {at_pos}",
    "a {shape} in {color}, {size}, {in_pos}",
    "a dark background with a {size} {color} {shape} {in_pos}",
)


@dataclass(frozen=True)
class SplitFiles:
    """Where one generated split lives: its COCO captions JSON and its image folder."""

    annotations: Path
    images: Path


@dataclass(frozen=True)
class Scene:
    """Everything needed to render and describe one image, independent of the resolution."""

    attributes: dict[str, str]  # keys in ATTRIBUTES order
    center: tuple[float, float]  # (x, y) fractions of the side
    extent: float  # bounding-box side as a fraction of the image side
    background: int  # grey level of the background
    captions: tuple[str, ...]


def heldout_combinations(seed: int, fraction: float) -> list[tuple[str, str]]:
    """Pick round(fraction * 24) (color, shape) pairs to hold out; all colours, shapes stay seen."""
    if not 0.0 <= fraction <= 0.5:
        raise ValueError(f"heldout_fraction must be in [0, 0.5], got {fraction}")
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    count = round(fraction * len(pairs))
    order = np.random.default_rng([seed, _HELDOUT_STREAM]).permutation(len(pairs))
    candidates = [pairs[i] for i in order]
    held: list[tuple[str, str]] = []
    while len(held) < count:
        # Prefer pairs whose colour and shape are held out least so far (min is stable, so ties
        # follow the seeded order); never take a colour's or a shape's last seen pair.
        usable = [p for p in candidates if p not in held and _keeps_coverage(held + [p])]
        best = min(usable, key=lambda p: sum(p[0] == h[0] or p[1] == h[1] for h in held))
        held.append(best)
    return sorted(held, key=pairs.index)


def _keeps_coverage(held: list[tuple[str, str]]) -> bool:
    seen = {(c, s) for c in COLORS for s in SHAPES} - set(held)
    return {c for c, _ in seen} == set(COLORS) and {s for _, s in seen} == set(SHAPES)


def sample_attributes(
    rng: np.random.Generator, split: str, heldout: list[tuple[str, str]]
) -> dict[str, str]:
    """Draw a (color, shape) pair allowed in `split` and a uniform size and position."""
    held = set(heldout)
    if split == "val_heldout":
        allowed = sorted(held, key=_pair_index)
    elif split in ("train", "val"):
        allowed = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in held]
    else:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if not allowed:
        raise ValueError(f"split {split!r} has no colour-shape combination to draw from")
    color, shape = allowed[rng.integers(len(allowed))]
    size = SIZES[rng.integers(len(SIZES))]
    position = POSITIONS[rng.integers(len(POSITIONS))]
    return {"shape": shape, "color": color, "size": size, "position": position}


def _pair_index(pair: tuple[str, str]) -> int:
    return COLORS.index(pair[0]) * len(SHAPES) + SHAPES.index(pair[1])


def make_captions(attrs: dict[str, str], rng: np.random.Generator, n: int) -> list[str]:
    """Describe `attrs` with `n` captions from distinct templates (repeats only past 12)."""
    position = attrs["position"]
    corner = position != "center"
    slots = {
        "size": attrs["size"],
        "color": attrs["color"],
        "shape": attrs["shape"],
        "pos": position,
        "in_pos": f"in the {position}",
        "at_pos": f"at the {position}",
        "in_region": f"in the {position} corner" if corner else "in the center of the image",
    }
    order: list[int] = []
    while len(order) < n:
        order.extend(int(i) for i in rng.permutation(len(TEMPLATES)))
    return [TEMPLATES[i].format(**slots) for i in order[:n]]


_PATTERNS: dict[str, list[tuple[str, re.Pattern[str]]]] = {
    key: [(v, re.compile(r"\b" + r"\s+".join(v.split()) + r"\b")) for v in values]
    for key, values in ATTRIBUTES.items()
}


def parse_caption(caption: str) -> dict[str, str | None]:
    """Recover each attribute from its vocabulary words; None where absent or ambiguous."""
    text = caption.lower()
    parsed: dict[str, str | None] = {}
    for key, patterns in _PATTERNS.items():
        found = [value for value, pattern in patterns if pattern.search(text)]
        parsed[key] = found[0] if len(found) == 1 else None
    return parsed


def sample_scene(
    rng: np.random.Generator,
    split: str,
    heldout: list[tuple[str, str]],
    *,
    jitter: float = 0.04,
    captions_per_image: int = 5,
) -> Scene:
    """Draw one scene; the order of draws is fixed, so a scene depends only on the generator."""
    attrs = sample_attributes(rng, split, heldout)
    extent = SIZE_EXTENT[attrs["size"]] * (1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER))
    base = np.array(POSITION_XY[attrs["position"]])
    # Clamp so a jittered large object in a corner stays whole inside the image.
    half = extent / 2 + _EDGE_MARGIN
    center = np.clip(base + rng.uniform(-jitter, jitter, size=2), half, 1.0 - half)
    background = int(rng.integers(BACKGROUND_RANGE[0], BACKGROUND_RANGE[1] + 1))
    captions = make_captions(attrs, rng, captions_per_image)
    return Scene(
        attributes=attrs,
        center=(float(center[0]), float(center[1])),
        extent=float(extent),
        background=background,
        captions=tuple(captions),
    )


def render_image(scene: Scene, resolution: int = 64, supersample: int = 4) -> np.ndarray:
    """Draw the scene at `supersample` x `resolution` and box-filter it down: uint8 [H, W, 3]."""
    side = resolution * supersample
    image = Image.new("RGB", (side, side), (scene.background,) * 3)
    draw = ImageDraw.Draw(image)
    cx, cy = scene.center[0] * side, scene.center[1] * side
    r = scene.extent * side / 2
    fill = COLOR_RGB[scene.attributes["color"]]
    shape = scene.attributes["shape"]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":  # upright isosceles triangle filling the bounding box
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "diamond":  # the square rotated by 45 degrees, diagonals = extent
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    # BOX averages each supersample block exactly: clean antialiasing without Lanczos ringing.
    image = image.resize((resolution, resolution), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.uint8)


@dataclass(frozen=True)
class _Settings:
    """Generator settings shared by every worker task (also written to meta.json)."""

    resolution: int
    captions_per_image: int
    supersample: int
    jitter: float
    seed: int
    heldout: tuple[tuple[str, str], ...]


def _scene_for(settings: _Settings, split: str, index: int) -> Scene:
    rng = np.random.default_rng([settings.seed, SPLITS.index(split), index])
    return sample_scene(
        rng,
        split,
        list(settings.heldout),
        jitter=settings.jitter,
        captions_per_image=settings.captions_per_image,
    )


def _render_chunk(
    settings: _Settings, split: str, start: int, stop: int, image_dir: str
) -> list[dict[str, Any]]:
    """Render and save images [start, stop) of a split; return their records in order."""
    records = []
    for index in range(start, stop):
        scene = _scene_for(settings, split, index)
        pixels = render_image(scene, settings.resolution, settings.supersample)
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        # Fixed PNG settings and no metadata, so the same seed gives the same bytes.
        Image.fromarray(pixels).save(
            os.path.join(image_dir, file_name), format="PNG", compress_level=6
        )
        records.append({"id": image_id, "file_name": file_name, "scene": scene})
    return records


def _coco_json(
    records: list[dict[str, Any]], split: str, settings: _Settings, info: dict[str, Any]
) -> dict[str, Any]:
    """Assemble the COCO captions JSON of one split from its ordered image records."""
    images, annotations = [], []
    per_image = settings.captions_per_image
    for rec in records:
        scene: Scene = rec["scene"]
        images.append(
            {
                "id": rec["id"],
                "file_name": rec["file_name"],
                "width": settings.resolution,
                "height": settings.resolution,
                "attributes": dict(scene.attributes),
            }
        )
        for k, caption in enumerate(scene.captions):
            ann_id = (rec["id"] - 1) * per_image + k + 1
            annotations.append({"id": ann_id, "image_id": rec["id"], "caption": caption})
    return {
        "info": {**info, "split": split},
        "licenses": [],
        "images": images,
        "annotations": annotations,
    }


def _validate(
    resolution: int,
    counts: dict[str, int],
    captions_per_image: int,
    supersample: int,
    jitter: float,
    seed: int,
    workers: int | None,
) -> None:
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8, got {resolution}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    if captions_per_image < 1:
        raise ValueError(f"captions_per_image must be >= 1, got {captions_per_image}")
    if not 0.0 <= jitter <= 0.1:
        raise ValueError(f"jitter must be in [0, 0.1], got {jitter}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0 or None, got {workers}")
    for split, count in counts.items():
        if count < 0:
            raise ValueError(f"num_{split} must be >= 0, got {count}")


def _render_all(
    settings: _Settings,
    counts: dict[str, int],
    root: Path,
    workers: int,
    progress: bool,
) -> dict[str, list[dict[str, Any]]]:
    """Render every split into `root/{split}/`, in chunks, in-process or in a process pool."""
    tasks = []
    for split, count in counts.items():
        (root / split).mkdir(parents=True)
        for start in range(0, count, _CHUNK):
            tasks.append((settings, split, start, min(start + _CHUNK, count), str(root / split)))
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    bar = tqdm(total=sum(counts.values()), desc="shapes", unit="img", disable=not progress)
    with bar:
        if workers == 0:
            for task in tasks:
                results[task[1], task[2]] = _render_chunk(*task)
                bar.update(task[3] - task[2])
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(_render_chunk, *task): task for task in tasks}
                for future in as_completed(futures):
                    task = futures[future]
                    results[task[1], task[2]] = future.result()
                    bar.update(task[3] - task[2])
    # Reassemble in index order, whatever order the chunks finished in.
    return {
        split: [rec for key in sorted(k for k in results if k[0] == split) for rec in results[key]]
        for split in counts
    }


def generate_shapes(
    out_dir: PathLike,
    *,
    resolution: int = 64,
    num_train: int = 20000,
    num_val: int = 1000,
    num_val_heldout: int = 1000,
    heldout_fraction: float = 0.15,
    captions_per_image: int = 5,
    supersample: int = 4,
    jitter: float = 0.04,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, SplitFiles]:
    """Generate the shapes dataset into `out_dir` (replaced atomically) in COCO captions format.

    Args:
        out_dir: Output folder; gets `annotations/captions_{split}.json`, `{split}/*.png` and
            `meta.json`. An existing folder is replaced only once the new one is complete.
        heldout_fraction: Share of the colour x shape pairs seen only in `val_heldout`.
        supersample: Drawing scale before the antialiasing downsample.
        jitter: Maximum offset of the object centre, as a fraction of the side.
        workers: Processes for rendering; None = os.cpu_count(), 0 = in this process.
    """
    counts = {"train": num_train, "val": num_val, "val_heldout": num_val_heldout}
    _validate(resolution, counts, captions_per_image, supersample, jitter, seed, workers)
    heldout = heldout_combinations(seed, heldout_fraction)
    if num_val_heldout > 0 and not heldout:
        raise ValueError("num_val_heldout > 0 but heldout_fraction holds out no combination")
    settings = _Settings(resolution, captions_per_image, supersample, jitter, seed, tuple(heldout))
    info = _info(settings, heldout_fraction, counts)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as root:
        n_workers = (os.cpu_count() or 1) if workers is None else workers
        records = _render_all(settings, counts, root, n_workers, progress)
        for split in SPLITS:
            coco = _coco_json(records[split], split, settings, info)
            atomic_write_json(root / "annotations" / f"captions_{split}.json", coco)
        meta = {**info, "attributes": ATTRIBUTES, "color_rgb": COLOR_RGB}
        atomic_write_json(root / "meta.json", meta)
    return {
        split: SplitFiles(out_dir / "annotations" / f"captions_{split}.json", out_dir / split)
        for split in SPLITS
    }


def _info(settings: _Settings, heldout_fraction: float, counts: dict[str, int]) -> dict[str, Any]:
    """Generator settings for the JSON `info` block; `fingerprint` identifies the content."""
    fields = asdict(settings)
    fields["heldout"] = [list(pair) for pair in settings.heldout]
    fields["heldout_fraction"] = heldout_fraction
    fields["counts"] = dict(counts)
    fields["format_version"] = _FORMAT_VERSION
    return {
        "description": "gan_t2i procedural shapes (one object per image, paraphrased captions)",
        **fields,
        "fingerprint": stable_hash(fields),
    }
