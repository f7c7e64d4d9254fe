"""`gan_t2i.evaluate`: records, reuse of cached real features, same numbers twice, bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, plain_config

from gan_t2i.evaluate import evaluate_run, format_table, select_checkpoints
from gan_t2i.train import train
from gan_t2i.utils import GanT2IError, read_jsonl


@pytest.fixture(scope="module")
def smoke_run(smoke_data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = plain_config(["experiment=smoke", f"paths.data_dir={smoke_data_dir}", "progress=false",
                        "train.keep_snapshots=0"], run)
    train(cfg, run)
    return run


def _eval_cfg(**over):
    cfg = {"metrics": [], "num_images": 8, "splits": ["val", "val_heldout"], "extractor": "random_cnn",
           "inception_weights": None, "truncation": 1.0, "seed": 0, "batch_size": 4,
           "kid_subset_size": 1000, "num_bootstrap": 200}
    return {**cfg, **over}


def test_feature_metrics_append_records_and_repeat_exactly(smoke_run, smoke_data_dir):
    kwargs = dict(checkpoint="last", metrics=["fid", "kid", "precision_recall"],
                  eval_cfg=_eval_cfg(), data_dir=str(smoke_data_dir), device=torch.device("cpu"),
                  progress=False)
    first = evaluate_run(smoke_run, **kwargs)
    names = {(r["split"], r["metric"]) for r in first}
    assert ("val", "fid_random_cnn") in names and ("val_heldout", "recall_random_cnn") in names
    assert all(r["kimg"] == pytest.approx(0.064) and r["num_images"] == 8 for r in first)
    assert any("8 real val vs 8 generated" in r["protocol"] for r in first)
    cached = list((smoke_data_dir / "eval" / "feature_stats").glob("random_cnn-val-*.npy"))
    assert len(cached) == 1
    second = evaluate_run(smoke_run, **kwargs)
    assert [r["value"] for r in first] == [r["value"] for r in second]
    assert len(read_jsonl(smoke_run / "metrics.jsonl")) == 2 * len(first)
    assert "fid_random_cnn" in format_table(first)


def test_alignment_metrics_have_ci_and_chance(smoke_run, smoke_data_dir):
    records = evaluate_run(smoke_run, checkpoint="all", metrics=["shapes_alignment", "r_precision"],
                           eval_cfg=_eval_cfg(splits=["val"]), data_dir=str(smoke_data_dir),
                           device=torch.device("cpu"), progress=False)
    kimgs = sorted({r["kimg"] for r in records})
    assert kimgs == [pytest.approx(0.032), pytest.approx(0.064)]  # every snapshot
    color = [r for r in records if r["metric"] == "shapes_alignment/color"][0]
    assert 0 <= color["ci_low"] <= color["value"] <= color["ci_high"] <= 1
    assert color["chance"] == pytest.approx(1 / 6)
    rp = [r for r in records if r["metric"] == "r_precision"][0]
    assert rp["chance"] == pytest.approx(0.01)


def test_bad_input_is_one_clear_error(smoke_run, smoke_data_dir, tmp_path):
    kwargs = dict(eval_cfg=_eval_cfg(), data_dir=str(smoke_data_dir), device=torch.device("cpu"))
    with pytest.raises(GanT2IError, match="unknown metric 'fidd'"):
        evaluate_run(smoke_run, checkpoint="last", metrics=["fidd"], **kwargs)
    with pytest.raises(GanT2IError, match="no checkpoints in"):
        select_checkpoints(tmp_path, "last")
    with pytest.raises(GanT2IError, match="no snapshot at 5.0 kimg"):
        select_checkpoints(smoke_run, "5")
    before = len(read_jsonl(smoke_run / "metrics.jsonl"))
    with pytest.raises(GanT2IError, match="KID needs"):
        evaluate_run(smoke_run, checkpoint="last", metrics=["kid"],
                     eval_cfg=_eval_cfg(num_images=1), data_dir=str(smoke_data_dir),
                     device=torch.device("cpu"), progress=False)
    assert len(read_jsonl(smoke_run / "metrics.jsonl")) == before  # nothing half-written


def test_cli_missing_run_is_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "gan_t2i.evaluate", f"run={tmp_path}/nope"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: run folder not found: {tmp_path}/nope"


def test_unavailable_inception_is_skipped_and_the_rest_goes_on(smoke_run, smoke_data_dir, caplog,
                                                                 monkeypatch, tmp_path):
    from gan_t2i.metrics import MetricUnavailable

    def no_weights(path=None):  # as on a machine without the file and without network
        raise MetricUnavailable(f"put inception-2015-12-05.pt at {tmp_path}")

    monkeypatch.setattr("gan_t2i.metrics.extractors.find_inception_weights", no_weights)
    records = evaluate_run(smoke_run, checkpoint="last", metrics=["fid", "shapes_alignment"],
                           eval_cfg=_eval_cfg(extractor="inception", splits=["val"]),
                           data_dir=str(smoke_data_dir), device=torch.device("cpu"), progress=False)
    assert {r["metric"].split("/")[0] for r in records} == {"shapes_alignment"}
    skips = [r.getMessage() for r in caplog.records if "fid skipped" in r.getMessage()]
    assert len(skips) == 1 and "inception-2015-12-05.pt" in skips[0]


def test_clip_metrics_run_with_a_local_model_and_skip_without(smoke_run, smoke_data_dir, tiny_clip_dir,
                                                              caplog):
    cfg = _eval_cfg(splits=["val"], clip_model=str(tiny_clip_dir), r_precision_scorer="clip")
    records = evaluate_run(smoke_run, checkpoint="last", metrics=["clip_score", "r_precision"],
                           eval_cfg=cfg, data_dir=str(smoke_data_dir), device=torch.device("cpu"),
                           progress=False)
    by_name = {r["metric"]: r for r in records}
    assert 0 <= by_name["clip_score"]["value"] <= 100
    assert by_name["r_precision"]["protocol"].startswith("clip scorer")
    missing = _eval_cfg(splits=["val"], clip_model="nobody/no-such-clip")
    records = evaluate_run(smoke_run, checkpoint="last", metrics=["clip_score", "fid"], eval_cfg=missing,
                           data_dir=str(smoke_data_dir), device=torch.device("cpu"), progress=False)
    assert [r["metric"] for r in records] == ["fid_random_cnn"]
    assert sum("clip_score skipped" in r.getMessage() for r in caplog.records) == 1
