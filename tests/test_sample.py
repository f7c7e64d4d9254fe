"""`gan_t2i.sample`: determinism, provenance round trip, layouts and one-line errors."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, plain_config
from PIL import Image

from gan_t2i import sample as S
from gan_t2i.utils import GanT2IError, file_hash
from gan_t2i.viz import caption_grid

RED = "a large red circle in the top left"
BLUE = "a small blue square at the bottom"


@pytest.fixture(scope="module")
def run_dir(smoke_data_dir, tmp_path_factory) -> Path:
    """A tiny smoke run (two training steps), trained in-process."""
    from gan_t2i.train import train

    run = tmp_path_factory.mktemp("sample_run")
    cfg = plain_config(["experiment=smoke", f"paths.data_dir={smoke_data_dir}", "progress=false",
                        "train.total_kimg=0.016"], run)
    train(cfg, run)
    return run


@pytest.fixture(scope="module")
def sampler(run_dir) -> S.Sampler:
    return S.load_sampler(run=run_dir, device="cpu")


def _copy_checkpoint(run_dir: Path, dest: Path, edit=None) -> Path:
    """A copy of the run's last.pt, optionally with `edit(state)` applied."""
    path = dest / "copy.pt"
    shutil.copy(run_dir / "checkpoints" / "last.pt", path)
    if edit is not None:
        state = torch.load(path, weights_only=True)
        edit(state)
        torch.save(state, path)
    return path


def test_same_seed_and_prompt_give_same_pixels(sampler):
    G, enc = sampler.G, sampler.encoder
    alone = S.sample_images(G, S.encode_prompts(enc, [RED]), [0, 1, 2], batch_size=4)
    again = S.sample_images(G, S.encode_prompts(enc, [RED]), [0, 1, 2], batch_size=4)
    # With another prompt first and more images: RED's rows land at other batch positions.
    mixed = S.sample_images(G, S.encode_prompts(enc, [BLUE, RED]), [0, 1, 2, 3, 4], batch_size=4)
    assert alone.shape == (1, 3, G.resolution, G.resolution, 3) and alone.dtype == np.uint8
    assert np.array_equal(alone, again)
    assert np.array_equal(alone[0], mixed[1, :3])
    assert not np.array_equal(mixed[0, :3], mixed[1, :3]), "different prompts, same images"
    assert not np.array_equal(alone[0, 0], alone[0, 1]), "different seeds, same image"


def test_the_generator_only_ever_sees_full_batches():
    seen = []

    def double(x):
        seen.append(x.shape[0])
        return x * 2

    x = torch.arange(10.0).unsqueeze(1)
    assert torch.equal(S.run_fixed_batches(double, x, batch_size=4), x * 2)
    assert seen == [4, 4, 4], "a short last batch would change the kernels' summation order"


def test_psi_zero_with_caption_centre_ignores_the_seed(sampler):
    c = S.encode_prompts(sampler.encoder, [RED, BLUE])
    zero = S.sample_images(sampler.G, c, [0, 1, 2], psi=0.0, center="caption", batch_size=4)
    assert all(np.array_equal(zero[p, 0], zero[p, j]) for p in range(2) for j in range(3))
    assert not np.array_equal(zero[0, 0], zero[1, 0]), "the caption should still matter"
    half = S.sample_images(sampler.G, c, [0, 1], psi=0.5, center="global", batch_size=4)
    assert not np.array_equal(half[0, 0], half[0, 1])


def test_grid_size_gif_frames_and_keyframe(sampler, tmp_path):
    request = S.Request(prompts=[RED, BLUE, "a green triangle"], n=3, batch_size=8)
    paths = S.sample(sampler, request, tmp_path)
    assert paths == [tmp_path / "grid.png"]
    res = sampler.G.resolution
    scale = S.grid_scale(res, 3)
    expected = caption_grid([np.zeros((3, res, res, 3), np.uint8)] * 3, request.prompts, scale=scale)
    with Image.open(paths[0]) as grid:
        assert grid.size == expected.size
        assert grid.size[0] >= 3 * res * scale

    walk = S.Request(prompts=[RED, BLUE, RED], mode="interpolate", frames=3, batch_size=8)
    gif, strip = tmp_path / "interpolation.gif", tmp_path / "filmstrip.png"
    assert sorted(S.sample(sampler, walk, tmp_path)) == sorted([gif, strip])
    with Image.open(gif) as im:
        assert im.n_frames == 3 * 2 + 1
    # Keyframe 0 of the walk is the grid image of its prompt and seed.
    c = S.encode_prompts(sampler.encoder, [RED, BLUE])
    frames = S.interpolation_frames(sampler.G, c, [0, 1], frames=3, batch_size=8)
    grid_image = S.sample_images(sampler.G, c[:1], [0], batch_size=8)[0, 0]
    assert frames.shape[0] == 4 and np.array_equal(frames[0], grid_image)


def test_style_mix_and_truncation_sweep_layouts(sampler, tmp_path):
    res, G = sampler.G.resolution, sampler.G
    c = S.encode_prompts(sampler.encoder, [RED])
    rows, cols, mixed = S.style_mix_images(G, c, [0, 1], [5, 6, 7], cutoff=G.num_ws // 2,
                                           batch_size=8)
    assert mixed.shape == (2, 3, res, res, 3)
    grid = S.sample_images(G, c, [0, 1], batch_size=8)[0]
    assert np.array_equal(rows, grid), "row sources are the plain images of their seeds"
    assert not np.array_equal(mixed[0, 0], rows[0]) and not np.array_equal(mixed[0, 0], cols[0])

    sweep = S.Request(prompts=[RED], mode="truncation_sweep", n=2, truncation_values=[1.0, 0.5],
                      batch_size=8)
    (path,) = S.sample(sampler, sweep, tmp_path)
    scale = S.grid_scale(res, 2)
    with Image.open(path) as im:
        expected = caption_grid([grid, grid], [f"psi 1: {RED}", f"psi 0.5: {RED}"], scale=scale)
        assert im.size == expected.size
    assert S.read_provenance(path)["truncation_values"] == [1.0, 0.5]


def test_from_image_reproduces_and_reports_a_changed_checkpoint(sampler, run_dir, tmp_path):
    ckpt = _copy_checkpoint(run_dir, tmp_path)
    copy = S.load_sampler(checkpoint=ckpt, device="cpu", encoder=sampler.encoder)
    request = S.Request(prompts=[RED, BLUE], n=2, seed=7, save_individual=True, batch_size=4)
    paths = S.sample(copy, request, tmp_path / "out")
    png = next(p for p in paths if "a-small-blue-square" in p.name and p.name.endswith("seed8.png"))
    record = S.read_provenance(png)
    assert (record["role"], record["prompt"], record["image_seed"]) == ("individual", BLUE, 8)
    assert record["checkpoint_hash"] == file_hash(ckpt) and record["prompts"] == [RED, BLUE]
    assert png.with_suffix(".json").is_file()

    same = S.reproduce(png, tmp_path / "re", device="cpu", encoder=sampler.encoder)
    assert same.identical and same.notes == [], same.summary()
    assert np.array_equal(S.load_rgb(png), S.load_rgb(same.path))
    grid = S.reproduce(tmp_path / "out" / "grid.png", tmp_path / "re", device="cpu",
                       encoder=sampler.encoder)
    assert grid.identical, grid.summary()

    old_hash = record["checkpoint_hash"]
    last_rgb = f"blocks.{len(sampler.G.blocks) - 1}.torgb.bias"
    _copy_checkpoint(run_dir, tmp_path, edit=lambda s: s["G_ema"][last_rgb].add_(0.5))
    changed = S.reproduce(png, tmp_path / "re2", device="cpu", encoder=sampler.encoder)
    assert not changed.identical
    assert f"checkpoint hash differs: saved {old_hash}, now {file_hash(ckpt)}" in changed.notes
    assert any(n.startswith("pixels differ:") for n in changed.notes)

    ckpt.unlink()
    with pytest.raises(GanT2IError, match="checkpoint this image was drawn from is gone"):
        S.reproduce(png, tmp_path / "re3", device="cpu", encoder=sampler.encoder)


def test_other_architecture_is_one_clear_line(run_dir, tmp_path):
    def shrink(state):
        state["config"]["generator"]["channel_max"] = 16

    ckpt = _copy_checkpoint(run_dir, tmp_path, edit=shrink)
    with pytest.raises(GanT2IError, match="different architecture") as info:
        S.load_generator(checkpoint=ckpt)
    assert "shape mismatch" in str(info.value) and "\n" not in str(info.value)


def test_missing_run_folder_fails_in_one_line_through_the_cli(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "gan_t2i.sample", f"run={tmp_path}/nope", f'prompts=["{RED}"]',
         f"out={tmp_path}/out"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: run folder not found: {tmp_path}/nope"]


def test_prompts_are_checked(sampler, tmp_path, caplog):
    with pytest.raises(GanT2IError, match="prompt 2 of 2 is empty"):
        S.read_prompts([RED, "   "])
    with pytest.raises(GanT2IError, match="no prompts"):
        S.read_prompts(None, None)
    with pytest.raises(GanT2IError, match="no prompts"):
        S.Request(prompts=[])
    with pytest.raises(GanT2IError, match="is empty"):
        S.encode_prompts(sampler.encoder, [""])
    file = tmp_path / "prompts.txt"
    file.write_text(f"{RED}\n\n  {BLUE}  \n", encoding="utf-8")
    assert S.read_prompts(prompts_file=file) == [RED, BLUE]

    long = " ".join(["red circle"] * 400)
    with caplog.at_level(logging.WARNING, logger="gan_t2i.sample"):
        c = S.encode_prompts(sampler.encoder, [RED, long])
    assert c.shape == (2, sampler.G.c_dim)
    warned = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warned) == 1 and "red circle red circle" in warned[0]
