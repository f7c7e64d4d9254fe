"""Tests of the procedural shapes dataset: determinism, held-out pairs, captions, pixels, layout."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gan_t2i.data import shapes
from gan_t2i.data.shapes import (
    ATTRIBUTES,
    COLOR_RGB,
    COLORS,
    SHAPES,
    SPLITS,
    generate_shapes,
    heldout_combinations,
    make_captions,
    parse_caption,
    render_image,
)

SMALL = {"num_train": 60, "num_val": 20, "num_val_heldout": 20, "progress": False}


def _generate(out: Path, **overrides) -> Path:
    kwargs = {"resolution": 32, "seed": 0, "workers": 0, **SMALL, **overrides}
    generate_shapes(out, **kwargs)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"captions_{split}.json").read_text())


def _captions_by_image(coco: dict) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for ann in coco["annotations"]:
        out.setdefault(ann["image_id"], []).append(ann["caption"])
    return out


def _pairs(coco: dict) -> set[tuple[str, str]]:
    return {(im["attributes"]["color"], im["attributes"]["shape"]) for im in coco["images"]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory.mktemp("shapes") / "seed0")


def test_layout_and_coco_keys(dataset: Path) -> None:
    assert (dataset / "meta.json").is_file()
    assert not list(dataset.parent.glob(".seed0.tmp-*"))  # the temporary folder was renamed
    for split, count in [("train", 60), ("val", 20), ("val_heldout", 20)]:
        coco = _load(dataset, split)
        assert set(coco) == {"info", "licenses", "images", "annotations"}
        assert len(coco["images"]) == count and len(coco["annotations"]) == 5 * count
        assert len({a["id"] for a in coco["annotations"]}) == 5 * count
        assert {a["image_id"] for a in coco["annotations"]} == {im["id"] for im in coco["images"]}
        for im in coco["images"]:
            assert set(im) == {"id", "file_name", "width", "height", "attributes"}
            assert im["file_name"] == f"{im['id']:06d}.png"
            assert (dataset / split / im["file_name"]).is_file()
        assert len(list((dataset / split).iterdir())) == count


def test_return_value_points_at_files(tmp_path: Path) -> None:
    files = generate_shapes(tmp_path / "d", resolution=16, workers=0, **SMALL)
    assert set(files) == set(SPLITS)
    for split, f in files.items():
        assert f.annotations == tmp_path / "d" / "annotations" / f"captions_{split}.json"
        assert f.annotations.is_file() and f.images.is_dir()


def test_same_seed_same_bytes_other_seed_differs(dataset: Path, tmp_path: Path) -> None:
    again = _files(_generate(tmp_path / "again"))
    assert again == _files(dataset)
    other = _files(_generate(tmp_path / "other", seed=1))
    assert other.keys() == again.keys()
    assert other["train/000001.png"] != again["train/000001.png"]
    assert other["annotations/captions_train.json"] != again["annotations/captions_train.json"]


def test_worker_processes_give_identical_bytes(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shapes, "_CHUNK", 16)  # several chunks per split, finishing out of order
    assert _files(_generate(tmp_path / "pool", workers=2)) == _files(dataset)


def test_captions_name_and_parse_to_the_image_attributes(dataset: Path) -> None:
    for split in SPLITS:
        coco = _load(dataset, split)
        captions = _captions_by_image(coco)
        for im in coco["images"]:
            attrs = im["attributes"]
            assert list(attrs) == list(ATTRIBUTES)
            assert len(set(captions[im["id"]])) == 5  # five distinct paraphrases
            for caption in captions[im["id"]]:
                for word in attrs.values():
                    assert re.search(rf"\b{word}\b", caption), (word, caption)
                assert parse_caption(caption) == attrs


def test_every_template_round_trips_for_every_combination() -> None:
    rng = np.random.default_rng(0)
    n = len(shapes.TEMPLATES)
    for values in itertools.product(*ATTRIBUTES.values()):
        attrs = dict(zip(ATTRIBUTES, values))
        captions = make_captions(attrs, rng, n)
        assert len(set(captions)) == n
        assert all(parse_caption(c) == attrs for c in captions)
    assert len(make_captions(attrs, rng, n + 3)) == n + 3


def test_parse_caption_missing_or_ambiguous_is_none() -> None:
    parsed = parse_caption("A RED thing and a blue thing in the   top left")
    assert parsed == {"shape": None, "color": None, "size": None, "position": "top left"}
    assert parse_caption("a reddish squareish blob")["color"] is None  # whole words only


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("fraction", [0.15, 0.3, 0.5])
def test_heldout_combinations_keep_every_colour_and_shape(seed: int, fraction: float) -> None:
    held = heldout_combinations(seed, fraction)
    assert held == heldout_combinations(seed, fraction)
    assert len(held) == len(set(held)) == round(fraction * 24)
    seen = {(c, s) for c in COLORS for s in SHAPES} - set(held)
    assert {c for c, _ in seen} == set(COLORS) and {s for _, s in seen} == set(SHAPES)
    if fraction == 0.15:  # 4 pairs spread over 4 colours and all 4 shapes
        assert len({c for c, _ in held}) == 4 and len({s for _, s in held}) == 4


def test_heldout_depends_on_seed() -> None:
    assert len({tuple(heldout_combinations(s, 0.15)) for s in range(10)}) > 1


def test_splits_respect_heldout_pairs(dataset: Path) -> None:
    meta = json.loads((dataset / "meta.json").read_text())
    held = {tuple(p) for p in meta["heldout"]}
    assert held == set(heldout_combinations(0, 0.15))
    assert not _pairs(_load(dataset, "train")) & held
    assert not _pairs(_load(dataset, "val")) & held
    assert _pairs(_load(dataset, "val_heldout")) <= held
    assert len(_pairs(_load(dataset, "val_heldout"))) > 1


def _object_mask(pixels: np.ndarray) -> np.ndarray:
    """Pixels far from the (median) background grey: the object and most of its antialiased rim."""
    background = np.median(pixels.reshape(-1, 3), axis=0)
    return np.abs(pixels.astype(float) - background).sum(-1) > 120


def _check_pixels(pixels: np.ndarray, attrs: dict[str, str]) -> None:
    mask = _object_mask(pixels)
    assert mask.sum() >= 4, attrs
    core = pixels[mask].astype(float).mean(0)
    nearest = min(COLOR_RGB, key=lambda c: np.linalg.norm(core - np.array(COLOR_RGB[c])))
    assert nearest == attrs["color"], (core, attrs)
    ys, xs = np.nonzero(mask)
    x, y = (xs.mean() + 0.5) / pixels.shape[1], (ys.mean() + 0.5) / pixels.shape[0]
    pos = attrs["position"]
    if pos == "center":
        assert 0.4 < x < 0.6 and 0.4 < y < 0.6, (x, y)
    else:
        assert (y < 0.5) == pos.startswith("top") and (x < 0.5) == pos.endswith("left"), (x, y)


def test_images_are_rgb_pngs_showing_colour_and_position(dataset: Path) -> None:
    for split in SPLITS:
        for im in _load(dataset, split)["images"]:
            with Image.open(dataset / split / im["file_name"]) as img:
                assert img.format == "PNG" and img.mode == "RGB" and img.size == (32, 32)
                pixels = np.asarray(img)
            assert im["width"] == im["height"] == 32
            _check_pixels(pixels, im["attributes"])


def test_every_colour_shape_position_renders_correctly() -> None:
    for values in itertools.product(*ATTRIBUTES.values()):
        attrs = dict(zip(ATTRIBUTES, values))
        center = shapes.POSITION_XY[attrs["position"]]
        scene = shapes.Scene(attrs, center, shapes.SIZE_EXTENT[attrs["size"]], 45, ())
        pixels = render_image(scene, resolution=32)
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
        _check_pixels(pixels, attrs)


def test_shapes_are_distinct_masks() -> None:
    masks = {}
    for shape in SHAPES:
        attrs = {"shape": shape, "color": "red", "size": "large", "position": "center"}
        scene = shapes.Scene(attrs, (0.5, 0.5), 0.42, 30, ())
        masks[shape] = _object_mask(render_image(scene, resolution=32))
    for a, b in itertools.combinations(SHAPES, 2):
        iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        assert iou < 0.85, (a, b, iou)


def test_scene_does_not_depend_on_resolution(dataset: Path, tmp_path: Path) -> None:
    big = _generate(tmp_path / "big", resolution=64)
    for split in SPLITS:
        small_coco, big_coco = _load(dataset, split), _load(big, split)
        assert [im["attributes"] for im in small_coco["images"]] == [
            im["attributes"] for im in big_coco["images"]
        ]
        assert small_coco["annotations"] == big_coco["annotations"]
        assert big_coco["images"][0]["width"] == 64
    # Same geometry too: the 64 px image box-downsampled to 32 px matches the 32 px render.
    for name in ("000001.png", "000002.png", "000003.png"):
        with Image.open(big / "train" / name) as img:
            assert img.size == (64, 64)
            halved = np.asarray(img.resize((32, 32), Image.Resampling.BOX), dtype=float)
        with Image.open(dataset / "train" / name) as img:
            assert np.abs(halved - np.asarray(img, dtype=float)).mean() < 2.0


def test_empty_splits(tmp_path: Path) -> None:
    out = _generate(tmp_path / "empty", num_train=0, num_val=0, num_val_heldout=3)
    for split in ("train", "val"):
        coco = _load(out, split)
        assert coco["images"] == [] and coco["annotations"] == []
        assert list((out / split).iterdir()) == []
    assert len(_load(out, "val_heldout")["images"]) == 3


def test_interrupted_run_leaves_previous_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _generate(tmp_path / "d", num_train=2, num_val=0, num_val_heldout=0)
    before = _files(out)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shapes, "render_image", boom)
    with pytest.raises(KeyboardInterrupt):
        _generate(out, seed=5)
    assert _files(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"resolution": 4}, "resolution"),
        ({"heldout_fraction": 0.6}, "heldout_fraction"),
        ({"heldout_fraction": -0.1}, "heldout_fraction"),
        ({"num_train": -1}, "num_train"),
        ({"captions_per_image": 0}, "captions_per_image"),
        ({"supersample": 0}, "supersample"),
        ({"jitter": 0.3}, "jitter"),
        ({"workers": -1}, "workers"),
        ({"heldout_fraction": 0.0}, "num_val_heldout"),
    ],
)
def test_invalid_arguments(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _generate(tmp_path / "bad", **overrides)
    assert not (tmp_path / "bad").exists()
