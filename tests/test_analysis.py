"""`gan_t2i.analysis`: fake run folders with planted values → frames, best values, config diffs, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from gan_t2i.analysis import (
    config_differences,
    evaluations,
    load_run,
    load_runs,
    metric_table,
    plot_metric,
    plot_stats,
    speed_summary,
)
from gan_t2i.training.checkpoint import snapshot_name
from gan_t2i.utils import GanT2IError

KIMGS = (1.024, 2.048, 3.072)
FID = "fid_shapes_oracle"
ACC = "shapes_alignment/color"
# Planted: in run "a" fid is lowest at kimg 2 and accuracy highest at kimg 3; in "b" at 1 and 2.
PLANTED = {"a": {FID: (5.0, 2.0, 3.0), ACC: (0.3, 0.5, 0.7)},
           "b": {FID: (1.5, 4.0, 3.5), ACC: (0.4, 0.9, 0.6)}}


def _lines(records: list[dict], torn: str = "") -> str:
    return "".join(json.dumps(r) + "\n" for r in records) + torn


def make_run(root: Path, name: str, *, mismatch_weight: float = 0.5, hydra_config: bool = True) -> Path:
    """A run folder as training + evaluation leave it, with the planted values of PLANTED[name]."""
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "samples").mkdir()
    stats = [{"kimg": k, "nimg": int(k * 1000), "loss_D": 1.4 - 0.1 * i, "loss_G": 2.0 + 0.1 * i,
              "r1_penalty": 0.02, "img_per_s": 50.0 + 10 * i, "sec_per_kimg": 20.0 - i,
              "data_wait_frac": 0.01, "peak_mem_mb": 900.0, "time": 1000.0 + 20 * i}
             for i, k in enumerate(KIMGS)]
    (run / "stats.jsonl").write_text(_lines(stats, torn='{"kimg": 4.0, "loss_D'))
    metrics = []
    for i, k in enumerate(KIMGS):
        ckpt = str(run / "checkpoints" / snapshot_name(int(k * 1000)))
        for split, shift in (("val", 0.0), ("val_heldout", 0.01)):
            metrics.append({"kimg": k, "split": split, "metric": FID, "value": PLANTED[name][FID][i] + shift,
                            "num_images": 16, "checkpoint": ckpt})
            v = PLANTED[name][ACC][i] - shift
            metrics.append({"kimg": k, "split": split, "metric": ACC, "value": v, "ci_low": v - 0.05,
                            "ci_high": v + 0.05, "chance": 1 / 6, "num_images": 16, "checkpoint": ckpt})
        (run / "checkpoints" / snapshot_name(int(k * 1000))).write_bytes(b"")
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(run / "samples" / f"grid-{int(k):06d}kimg.png")
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    (run / "metrics.jsonl").write_text(_lines(metrics[:3]) + "{not json\n" + _lines(metrics[3:]))
    if hydra_config:
        cfg = {"name": "shapes_quick", "data": {"name": "shapes", "resolution": 32},
               "loss": {"kind": "nonsaturating", "r1_gamma": 1.0, "mismatch_weight": mismatch_weight},
               "train": {"batch_size": 32, "betas": [0.0, 0.99]},
               "paths": {"data_dir": f"data-{name}", "output_dir": str(run)}}
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


@pytest.fixture
def two_runs(tmp_path) -> list[Path]:
    return [make_run(tmp_path, "a", mismatch_weight=0.5), make_run(tmp_path, "b", mismatch_weight=0.0)]


def test_load_run_reads_every_part_and_skips_bad_lines(two_runs):
    run = load_run(two_runs[0])
    assert run.name == "a" and run.config["loss"]["mismatch_weight"] == 0.5
    assert run.stats["kimg"].tolist() == list(KIMGS)  # torn last line ignored
    assert len(run.metrics) == 12  # 3 kimg × 2 splits × 2 metrics; the malformed line skipped
    assert [p.name for p in run.grids] == [f"grid-00000{k}kimg.png" for k in (1, 2, 3)]
    assert [p.name for p in run.checkpoints][-1] == "last.pt"
    assert sorted(run.snapshots) == list(KIMGS)
    assert speed_summary(run)["median_img_per_s"] == 60.0
    assert speed_summary(run)["kimg_trained"] == 3.072


def test_reevaluation_replaces_the_older_record(two_runs):
    with open(two_runs[0] / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kimg": 2.048, "split": "val", "metric": FID, "value": 9.0}) + "\n")
    run = load_run(two_runs[0])
    fid = run.metrics[(run.metrics["metric"] == FID) & (run.metrics["split"] == "val")]
    assert fid["value"].tolist() == [5.0, 9.0, 3.0]


def test_metric_table_best_is_min_for_fid_and_max_for_accuracy(two_runs):
    table = metric_table(load_runs([str(p) for p in two_runs]), split="val").set_index(["run", "metric"])
    assert len(table) == 4
    a_fid, a_acc, b_fid, b_acc = (table.loc[k] for k in [("a", FID), ("a", ACC), ("b", FID), ("b", ACC)])
    assert (a_fid.best_kimg, a_fid.best_value, a_fid.direction) == (2.048, 2.0, "min")
    assert (a_acc.best_kimg, a_acc.best_value, a_acc.direction) == (3.072, 0.7, "max")
    assert (b_fid.best_kimg, b_acc.best_kimg) == (1.024, 2.048)
    assert (b_acc.final_kimg, b_acc.final_value) == (3.072, 0.6)
    assert b_acc.best_ci_low == pytest.approx(0.85) and b_acc.best_ci_high == pytest.approx(0.95)
    assert a_fid.best_checkpoint == str(two_runs[0] / "checkpoints" / "snapshot-000002.048kimg.pt")
    evals = evaluations(load_runs(str(two_runs[0])), ["fid"])
    best = evals[evals["is_best"]][["split", "kimg"]].values.tolist()
    assert best == [["val", 2.048], ["val_heldout", 2.048]]


def test_config_differences_list_exactly_the_differing_key(two_runs, tmp_path):
    diffs = config_differences(load_runs(str(tmp_path / "*")))  # paths.* differ too: ignored
    assert diffs.index.tolist() == ["loss.mismatch_weight"]
    assert diffs.loc["loss.mismatch_weight"].tolist() == [0.5, 0.0]
    assert config_differences(load_runs(str(two_runs[0]))).empty


def test_saved_config_resolves_except_hydra_paths(tmp_path):
    run = make_run(tmp_path, "a")
    (run / ".hydra" / "config.yaml").write_text(
        "paths:\n  output_dir: ${hydra:runtime.output_dir}\n"
        "generator:\n  channel_max: ${discriminator.channel_max}\ndiscriminator:\n  channel_max: 64\n")
    cfg = load_run(run).config
    assert cfg["generator"]["channel_max"] == 64
    assert cfg["paths"]["output_dir"] == "${hydra:runtime.output_dir}"


def test_config_falls_back_to_the_checkpoint(tmp_path):
    import torch

    run = make_run(tmp_path, "a", hydra_config=False)
    assert load_run(run).config == {}  # empty last.pt: unreadable, config unknown (a warning)
    torch.save({"config": {"loss": {"mismatch_weight": 0.25}}}, run / "checkpoints" / "last.pt")
    assert load_run(run).config["loss"]["mismatch_weight"] == 0.25


def test_not_a_run_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GanT2IError, match="not a run folder"):
        load_run(tmp_path / "empty")
    with pytest.raises(GanT2IError, match="run folder not found"):
        load_runs([str(tmp_path / "missing")])
    with pytest.raises(GanT2IError, match="no runs matched"):
        load_runs(str(tmp_path / "empty" / "*"))
    make_run(tmp_path, "a")
    assert [r.name for r in load_runs(str(tmp_path / "*"))] == ["a"]  # the glob skips "empty"


def test_plots_have_a_line_per_run_and_mark_the_best(two_runs):
    runs = load_runs([str(p) for p in two_runs])
    fig = plot_metric(runs, FID, "val")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    stars = [line for line in ax.lines if line.get_marker() == "*"]
    assert [(s.get_xdata()[0], s.get_ydata()[0]) for s in stars] == [(2.048, 2.0), (1.024, 1.5)]
    assert len(plot_metric(runs, ACC).axes) == 2  # a panel per split
    fig = plot_stats(runs, ["loss_D", "img_per_s"])
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]
