"""COCO-captions reader, image store and Dataset on a tiny fixture with bad files in it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gan_t2i.data import ImageCaptionDataset, InfiniteSampler, collate, prepare_store
from gan_t2i.data.coco import read_captions
from gan_t2i.data.store import ImageStore, SplitSource, build_store, is_complete
from gan_t2i.utils import GanT2IError


def _write_fixture(root: Path) -> Path:
    """COCO-format fixture: RGB, greyscale, CMYK, RGBA, a missing and a truncated file."""
    images = root / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (80, 40), (200, 10, 10)).save(images / "rgb_wide.png")
    Image.new("L", (32, 32), 128).save(images / "grey.png")
    Image.new("CMYK", (40, 60), (0, 255, 255, 0)).save(images / "cmyk.jpg", quality=95)
    Image.new("RGBA", (16, 16), (10, 200, 10, 128)).save(images / "rgba.png")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(images / "truncated.jpg", quality=95)
    data = (images / "truncated.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 3])
    names = ["rgb_wide.png", "grey.png", "cmyk.jpg", "rgba.png", "missing.jpg", "truncated.jpg",
             "no_caption.png"]
    Image.new("RGB", (8, 8)).save(images / "no_caption.png")
    ann = {
        "images": [{"id": i + 1, "file_name": n, "width": 1, "height": 1} for i, n in enumerate(names)],
        "annotations": [
            {"id": 10 * (i + 1) + k, "image_id": i + 1, "caption": f"  caption {k} of\n{n} "}
            for i, n in enumerate(names[:-1]) for k in range(2)
        ] + [{"id": 999, "image_id": 7, "caption": "   "}],
    }
    path = root / "captions.json"
    path.write_text(json.dumps(ann))
    return path


@pytest.fixture()
def fixture_store(tmp_path):
    ann = _write_fixture(tmp_path / "coco")
    reports = build_store(tmp_path / "store", {"train": SplitSource(ann, tmp_path / "coco" / "images")},
                          resolution=24, progress=False)
    return ImageStore(tmp_path / "store"), reports["train"]


def test_read_captions_counts_and_normalises(tmp_path):
    index = read_captions(_write_fixture(tmp_path))
    assert [r.file_name for r in index.records][:2] == ["rgb_wide.png", "grey.png"]
    assert index.records[0].captions == ["caption 0 of rgb_wide.png", "caption 1 of rgb_wide.png"]
    assert index.images_without_caption == 1 and index.empty_captions == 1


def test_good_images_load_as_rgb_bad_ones_counted_and_named(fixture_store, caplog):
    store, report = fixture_store
    split = store.split("train")
    assert split.images.shape == (4, 24, 24, 3) and split.images.dtype == np.uint8
    assert report.bad_images == 2 and report.images_without_caption == 1
    assert any("missing.jpg (missing)" in n for n in report.bad_names)
    assert any("truncated.jpg (undecodable" in n for n in report.bad_names)
    assert split.num_captions == 8
    # colours survive the conversions: red RGB, grey L, CMYK (0,255,255,0) = red, RGBA green
    assert tuple(split.images[0, 12, 12]) == (200, 10, 10)
    assert len(set(split.images[1, 12, 12])) == 1  # grey stays grey in RGB
    assert split.images[2, 12, 12, 0] > 200 and split.images[2, 12, 12, 1] < 50
    assert split.images[3, 12, 12, 1] > 150
    # every caption points at its own image
    names = [m["file_name"] for m in split.image_meta]
    for text, row in zip(split.captions, split.caption_image):
        assert text.endswith(names[row])


def test_summary_warning_names_bad_files_once(tmp_path, caplog):
    ann = _write_fixture(tmp_path / "coco")
    with caplog.at_level(logging.WARNING):
        build_store(tmp_path / "s", {"train": SplitSource(ann, tmp_path / "coco" / "images")},
                    resolution=16, progress=False)
    bad_lines = [r.getMessage() for r in caplog.records if "bad image" in r.getMessage()]
    assert len(bad_lines) == 1 and "missing.jpg" in bad_lines[0] and "truncated.jpg" in bad_lines[0]


def test_on_bad_image_error_names_the_file_and_leaves_no_store(tmp_path):
    ann = _write_fixture(tmp_path / "coco")
    with pytest.raises(GanT2IError, match="missing.jpg"):
        build_store(tmp_path / "s", {"train": SplitSource(ann, tmp_path / "coco" / "images")},
                    resolution=16, on_bad_image="error", progress=False)
    assert not is_complete(tmp_path / "s") and not (tmp_path / "s").exists()
    assert not list(tmp_path.glob(".s.tmp-*"))


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"images": []}), "missing key 'annotations'"),
    (json.dumps({"images": [{"id": 1}], "annotations": []}), "images\\[0\\] is missing key 'file_name'"),
    (json.dumps({"images": [], "annotations": [{"id": 1, "image_id": 1}]}), "missing key 'caption'"),
])
def test_malformed_json_names_file_and_key(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(GanT2IError, match=message) as info:
        read_captions(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_non_square_is_center_cropped(tmp_path):
    root = tmp_path / "c"
    (root / "im").mkdir(parents=True)
    img = np.zeros((20, 60, 3), np.uint8)
    img[:, :20] = (255, 0, 0)  # left third red, centre third green, right third blue
    img[:, 20:40] = (0, 255, 0)
    img[:, 40:] = (0, 0, 255)
    Image.fromarray(img).save(root / "im" / "a.png")
    (root / "a.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}],
                                             "annotations": [{"id": 1, "image_id": 1, "caption": "x"}]}))
    build_store(tmp_path / "s", {"train": SplitSource(root / "a.json", root / "im")},
                resolution=10, progress=False)
    out = ImageStore(tmp_path / "s").split("train").images[0]
    assert (out[:, :, 1] > 200).all() and (out[:, :, 0] < 50).all()  # only the green centre kept


def test_prepare_store_is_idempotent_and_keyed(tmp_path):
    ann = _write_fixture(tmp_path / "coco")
    data = {"name": "coco", "resolution": 16, "annotations": str(ann),
            "images": str(tmp_path / "coco" / "images"), "on_bad_image": "skip", "workers": 1}
    store, built = prepare_store(data, tmp_path / "d", progress=False)
    assert built
    again, built_again = prepare_store(data, tmp_path / "d", progress=False)
    assert not built_again and again.folder == store.folder
    other, built_other = prepare_store({**data, "resolution": 8}, tmp_path / "d", progress=False)
    assert built_other and other.folder != store.folder


def test_dataset_items_sampler_and_loader(fixture_store):
    store, _ = fixture_store
    split = store.split("train")
    ds = ImageCaptionDataset(split)
    image, caption = ds[3]
    assert image.shape == (3, 24, 24) and image.dtype == torch.uint8
    expected = torch.from_numpy(np.array(split.images[split.caption_image[3]])).permute(2, 0, 1)
    assert torch.equal(image, expected)
    flipped = ImageCaptionDataset(split, xflip=True)
    assert len(flipped) == 2 * len(ds)
    mirror, caption_m = flipped[len(ds) + 3]
    assert caption_m == caption and torch.equal(mirror, image.flip(-1))
    loader = torch.utils.data.DataLoader(ds, batch_size=5, sampler=InfiniteSampler(len(ds), seed=1),
                                         collate_fn=collate)
    images, captions = next(iter(loader))
    assert images.shape == (5, 3, 24, 24) and captions.dtype == torch.int64
    for img, cap in zip(images, captions):
        assert torch.equal(img, ds[int(cap)][0])


def test_sampler_resume_and_shards():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    full = take(InfiniteSampler(7, seed=3), 30)
    assert sorted(full[:7]) == list(range(7)) and full[:7] != full[7:14]  # per-epoch permutations
    assert take(InfiniteSampler(7, seed=3, start=11), 19) == full[11:]
    r0 = take(InfiniteSampler(7, seed=3, rank=0, world_size=2, start=4), 8)
    r1 = take(InfiniteSampler(7, seed=3, rank=1, world_size=2, start=4), 8)
    assert r0 == full[4:20:2] and r1 == full[5:21:2]


def test_first_captions_one_per_image_in_order(fixture_store):
    store, _ = fixture_store
    split = store.split("train")
    rows, images = split.first_captions(3)
    assert images.tolist() == [0, 1, 2]
    assert [split.caption_image[r] for r in rows] == [0, 1, 2]
    assert all(split.captions[r].startswith("caption 0 of") for r in rows)
    assert len(split.first_captions(100)[0]) == split.num_images
