"""The training loop: two steps of every experiment, exact resume, corrupt checkpoints, NaN."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, plain_config

from gan_t2i.logger import RunLogger
from gan_t2i.train import build_trainer, resume, train
from gan_t2i.training.checkpoint import list_snapshots, load_checkpoint
from gan_t2i.training.data import load_train_data
from gan_t2i.utils import GanT2IError, read_jsonl
from gan_t2i.viz import to_uint8


def _cfg(data_dir: Path, run_dir: Path, *extra: str) -> dict:
    return plain_config(["experiment=smoke", f"paths.data_dir={data_dir}", "progress=false",
                         *extra], run_dir)


def _trainer(cfg: dict, run_dir: Path):
    from gan_t2i.prepare import prepare

    prepared = prepare(cfg["data"], cfg["text"], cfg["paths"]["data_dir"], progress=False)
    data = load_train_data(prepared.store, prepared.embeddings, sample_captions=2)
    torch.manual_seed(cfg["train"]["seed"])
    return build_trainer(cfg, data, run_dir, RunLogger(run_dir), device=torch.device("cpu"))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)
    return {f"{net}.{k}": v for net in ("G", "D", "G_ema") for k, v in state[net].items()}


def test_smoke_run_writes_the_run_folder(smoke_data_dir, tmp_path):
    run = tmp_path / "run"
    trainer = train(_cfg(smoke_data_dir, run), run)
    assert trainer.progress.cur_nimg == 64
    stats = read_jsonl(run / "stats.jsonl")
    assert [r["nimg"] for r in stats] == [16, 32, 48, 64]
    for key in ("loss_D", "loss_G", "D_real", "D_fake", "D_mismatch", "img_per_s", "sec_per_kimg",
                "peak_mem_mb", "data_wait_frac"):
        assert key in stats[-1], key
    assert any("r1_penalty" in r for r in stats)
    assert (run / "checkpoints" / "last.pt").is_file()
    assert [p.name for p in list_snapshots(run / "checkpoints")] == [
        "snapshot-000000.032kimg.pt", "snapshot-000000.064kimg.pt"]
    grids = sorted((run / "samples").glob("grid-*.png"))
    assert grids, "no sample grid"
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["cur_nimg"] == 64 and state["config"]["name"] == "smoke"
    assert set(state) >= {"G", "D", "G_ema", "opt_G", "opt_D", "rng", "code_version", "augment"}


def test_nan_loss_is_skipped_and_counted(smoke_data_dir, tmp_path):
    cfg = _cfg(smoke_data_dir, tmp_path)
    trainer = _trainer(cfg, tmp_path)
    calls = {"n": 0}

    def inject(name, loss):
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 3 else loss  # D phase of the second step

    trainer.fault = inject
    trainer.run()
    assert trainer.progress.nonfinite_total == 1
    for module in (trainer.G, trainer.D, trainer.G_ema):
        assert all(torch.isfinite(p).all() for p in module.parameters())
    assert read_jsonl(tmp_path / "stats.jsonl")[-1]["nonfinite_total"] == 1


def test_nan_every_step_stops_and_keeps_last_good_checkpoint(smoke_data_dir, tmp_path):
    cfg = _cfg(smoke_data_dir, tmp_path, "train.max_nonfinite=3")
    trainer = _trainer(cfg, tmp_path)
    trainer.run()  # a good run first: writes last.pt at 64 images
    good = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    trainer.s.total_kimg = 0.2
    trainer.fault = lambda name, loss: loss * float("nan")
    with pytest.raises(GanT2IError, match="3 non-finite steps in a row"):
        trainer.run()
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == good


def test_truncated_last_falls_back_to_snapshot(smoke_data_dir, tmp_path, caplog):
    run = tmp_path / "run"
    train(_cfg(smoke_data_dir, run, "train.snapshot_kimg=0.016", "train.keep_snapshots=0"), run)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    trainer = _trainer(_cfg(smoke_data_dir, run), run)
    with caplog.at_level(logging.WARNING):
        path = resume(trainer, "auto", torch.device("cpu"))
    assert path.endswith("snapshot-000000.064kimg.pt")
    assert trainer.progress.cur_nimg == 64
    assert any("cannot read checkpoint" in r.getMessage() for r in caplog.records)


def test_resume_with_changed_settings_warns_and_names_them(smoke_data_dir, tmp_path, caplog):
    run = tmp_path / "run"
    train(_cfg(smoke_data_dir, run), run)
    trainer = _trainer(_cfg(smoke_data_dir, run, "train.batch_size=4", "train.total_kimg=1",
                            "loss.r1_gamma=2.5"), run)
    with caplog.at_level(logging.WARNING):
        resume(trainer, "auto", torch.device("cpu"))
    (message,) = [r.getMessage() for r in caplog.records if "other than it was trained" in r.getMessage()]
    assert "loss.r1_gamma: 1.0 -> 2.5" in message and "train.batch_size: 8 -> 4" in message
    assert "total_kimg" not in message  # training longer is a plain continuation


def test_other_architecture_lists_mismatched_keys(smoke_data_dir, tmp_path):
    run = tmp_path / "run"
    train(_cfg(smoke_data_dir, run), run)
    other = _trainer(_cfg(smoke_data_dir, tmp_path / "b", "generator.channel_max=16",
                          "generator.mapping_layers=3"), tmp_path / "b")
    with pytest.raises(GanT2IError, match="different architecture") as info:
        resume(other, str(run), torch.device("cpu"))
    message = str(info.value)
    assert "shape mismatch" in message and "mapping.layers.2" in message and "\n" not in message


def _train_cmd(data_dir: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gan_t2i.train", "experiment=smoke", f"paths.data_dir={data_dir}",
            f"hydra.run.dir={run}", "progress=false", "train.total_kimg=0.192",
            "train.snapshot_kimg=0.016", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(smoke_data_dir, tmp_path):
    alone, killed = tmp_path / "alone", tmp_path / "killed"
    subprocess.run(_train_cmd(smoke_data_dir, alone), check=True, cwd=ROOT, env=_env(),
                   capture_output=True, timeout=600)
    proc = subprocess.Popen(_train_cmd(smoke_data_dir, killed), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill mid-run, once a few snapshots exist
        if len(list((killed / "checkpoints").glob("snapshot-*"))) >= 1 and \
                (killed / "stats.jsonl").is_file() and \
                len(read_jsonl(killed / "stats.jsonl")) >= 5:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = load_checkpoint(killed / "checkpoints" / "last.pt")["cur_nimg"]
    assert 0 < before < 192, "the kill should land mid-run"
    done = subprocess.run(_train_cmd(smoke_data_dir, killed), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    a = _weights(alone / "checkpoints" / "last.pt")
    b = _weights(killed / "checkpoints" / "last.pt")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    sa = load_checkpoint(alone / "checkpoints" / "last.pt")
    sb = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert sa["cur_nimg"] == sb["cur_nimg"] == 192
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])


EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_trains_two_steps(experiment, smoke_data_dir, tmp_path, coco_fixture):
    extra = [f"experiment={experiment}", f"paths.data_dir={smoke_data_dir}", "progress=false",
             "train.batch_size=4", "train.total_kimg=0.008", "train.snapshot_kimg=1",
             "train.tick_kimg=0.004", "train.sample_captions=1", "train.sample_z=2",
             "train.workers=0"]
    cfg = plain_config(extra, tmp_path)
    # GPU-sized experiments keep their structure (resolution, depth, mapping, loss, augment)
    # but get CPU-sized widths here; the real sizes would take minutes per step.
    for net in ("generator", "discriminator"):
        if cfg[net]["channel_max"] > 128 or cfg[net]["channel_base"] > 4096:
            extra += [f"{net}.channel_base=4096", f"{net}.channel_max=64"]
    if cfg["data"]["name"] == "coco":
        extra += [f"data.annotations={coco_fixture[0]}", f"data.images={coco_fixture[1]}"]
    elif cfg["data"]["shapes"]["num_train"] > 64:  # the real sizes take a minute to generate
        extra += ["data.shapes.num_train=64", "data.shapes.num_val=8", "data.shapes.num_val_heldout=8"]
    cfg = plain_config(extra, tmp_path)
    trainer = train(cfg, tmp_path)
    assert trainer.progress.step == 2
    assert [r["step"] for r in read_jsonl(tmp_path / "stats.jsonl")] == [1, 2]
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert trainer.G.resolution == cfg["data"]["resolution"]


def test_eval_during_training_logs_metrics_and_keeps_the_trajectory(smoke_data_dir, tmp_path):
    base = ["train.eval_every_kimg=0.032", "eval.num_images=8", "eval.extractor=random_cnn",
            "eval.metrics=[fid]", "eval.splits=[val]"]
    with_eval, without = tmp_path / "a", tmp_path / "b"
    ta = train(_cfg(smoke_data_dir, with_eval, *base), with_eval)
    tb = train(_cfg(smoke_data_dir, without), without)
    records = read_jsonl(with_eval / "metrics.jsonl")
    assert [r["kimg"] for r in records] == [0.032, 0.064]
    assert all(r["metric"] == "fid_random_cnn" and r["value"] >= 0 for r in records)
    for pa, pb in zip(ta.G.parameters(), tb.G.parameters()):
        assert torch.equal(pa, pb)  # evaluation drew nothing from the training RNG


def test_cross_attention_trains_on_token_embeddings(smoke_data_dir, tmp_path):
    with pytest.raises(GanT2IError, match="needs token embeddings: set text.tokens=true"):
        train(_cfg(smoke_data_dir, tmp_path / "a", "generator.attention_resolutions=[8]"), tmp_path / "a")
    run = tmp_path / "b"
    trainer = train(_cfg(smoke_data_dir, run, "generator.attention_resolutions=[8]", "text.tokens=true",
                         "text.max_tokens=16"), run)
    attention = [b.attention for b in trainer.G.blocks if b.attention is not None]
    assert len(attention) == 1 and attention[0].gain.item() != 0.0  # it learned from the tokens
    tokens = trainer.data.sample_tokens
    assert tokens[0].shape[:2] == tokens[1].shape == (len(trainer.data.sample_texts), 16)
    assert (run / "checkpoints" / "last.pt").is_file()
    # evaluate and sample feed the tokens too
    from gan_t2i.evaluate import evaluate_run
    from gan_t2i.sample import load_sampler

    eval_cfg = {"metrics": ["fid"], "num_images": 4, "splits": ["val"], "extractor": "random_cnn",
                "inception_weights": None, "truncation": 1.0, "seed": 0, "batch_size": 4,
                "kid_subset_size": 4, "num_bootstrap": 10}
    records = evaluate_run(run, checkpoint="last", metrics=["fid"], eval_cfg=eval_cfg,
                           data_dir=str(smoke_data_dir), device=torch.device("cpu"), progress=False)
    assert records and records[0]["metric"] == "fid_random_cnn"
    _check_sampling_feeds_tokens(load_sampler(run=run, device="cpu"), tmp_path / "samples")


def test_swapped_caption_negatives_train(smoke_data_dir, tmp_path):
    with pytest.raises(GanT2IError, match="needs swapped captions"):
        train(_cfg(smoke_data_dir, tmp_path / "a", "loss.swap_weight=1.0"), tmp_path / "a")
    run = tmp_path / "b"
    groups = "[[circle,square,triangle,diamond],[red,green,blue,yellow,purple,cyan]]"
    trainer = train(_cfg(smoke_data_dir, run, "loss.swap_weight=1.0",
                         f"text.swap_groups={groups}"), run)
    assert trainer.data.swaps is not None
    records = read_jsonl(run / "stats.jsonl")
    assert records and all(np.isfinite(r["D_swap"]) for r in records)


def _check_sampling_feeds_tokens(sampler, out: Path) -> None:
    from gan_t2i import sample as S

    G, prompts = sampler.G, ["a large red circle in the top left", "a small blue square"]
    assert sampler.max_tokens == 16 and sampler.source["text_max_tokens"] == 16
    c = S.encode_prompts(sampler.encoder, prompts, G)
    d = G.c_dim
    assert c.shape == (2, d + 16 * d + 16)
    pooled, tokens, mask = G.unpack(c)
    assert torch.equal(pooled, S.encode_prompts(sampler.encoder, prompts))  # same pooled rows
    assert mask[:, 0].all() and not mask.all() and tokens.abs().sum() > 0
    images = S.sample_images(G, c, [0, 1], batch_size=4)  # [2 prompts, 2 seeds, H, W, 3]
    with torch.inference_mode():  # the same by hand, with the tokens and without them
        z = S.make_z([0, 1], G.z_dim).repeat(2, 1)
        rows = pooled.repeat_interleave(2, 0)
        ws = S.broadcast_ws(G, G.G.map(z, rows))
        tok = (tokens.repeat_interleave(2, 0), mask.repeat_interleave(2, 0))
        by_hand = G.G.synthesis(ws, rows, noise_mode="const", tokens=tok)
        blind = G.G.synthesis(ws, rows, noise_mode="const",
                              tokens=(torch.zeros_like(tok[0]), tok[1]))
    assert np.array_equal(images.reshape(4, *images.shape[2:]), to_uint8(by_hand))
    assert not np.array_equal(to_uint8(by_hand), to_uint8(blind))  # the tokens are live
    half = G.lerp_caption(c[0], c[1], 0.5)
    assert torch.equal(G.unpack(half[None])[2][0], mask[0] | mask[1])
    for mode in ("grid", "interpolate", "truncation_sweep", "style_mix"):
        request = S.Request(prompts=prompts, mode=mode, n=2, frames=2, truncation_values=[0.5, 1.0],
                            center_samples=8, batch_size=4)
        written = S.sample(sampler, request, out / mode)
        assert written and all(p.is_file() for p in written), mode


def test_compile_falls_back_to_eager_when_the_first_call_fails(caplog):
    from gan_t2i.train import CompiledOrEager

    module = torch.nn.Linear(3, 2)
    calls = {"compiled": 0}

    def broken(*args, **kwargs):
        calls["compiled"] += 1
        raise RuntimeError("InductorError: no working C++ compiler\nlong trace")

    wrapped = CompiledOrEager(module, compiled=broken)
    x = torch.randn(4, 3)
    with caplog.at_level(logging.WARNING):
        out = wrapped(x)
    torch.testing.assert_close(out, module(x))
    assert any("torch.compile failed on the first call (InductorError: no working C++ compiler)"
               in r.getMessage() for r in caplog.records)
    wrapped(x)
    assert calls["compiled"] == 1  # not retried
    assert wrapped.weight is module.weight  # attributes are the eager module's


def test_compiled_module_is_used_once_it_works():
    from gan_t2i.train import CompiledOrEager

    module = torch.nn.Linear(3, 2)
    seen = []
    wrapped = CompiledOrEager(module, compiled=lambda x: seen.append(x) or module(x) * 0)
    x = torch.randn(2, 3)
    assert torch.equal(wrapped(x), torch.zeros(2, 2)) and torch.equal(wrapped(x), torch.zeros(2, 2))
    assert len(seen) == 2
