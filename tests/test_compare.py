"""`python -m gan_t2i.compare` and `experiments/analysis.ipynb` on fake run folders."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat
import pandas as pd
import pytest
from conftest import ROOT, compose
from PIL import Image
from test_analysis import ACC, FID, make_run

from gan_t2i import compare as compare_mod
from gan_t2i.compare import compare
from gan_t2i.utils import GanT2IError

NOTEBOOK = ROOT / "experiments" / "analysis.ipynb"


def run_app(*overrides: str) -> None:
    """The app body on `conf/compare.yaml` composed with `overrides`, in this process (a subprocess
    would pay for torch's import again); the body is `@task`-wrapped, as under `@hydra.main`."""
    compare_mod.main.__wrapped__(compose(list(overrides), config_name="compare"))


def test_two_runs_write_tables_plots_and_best_checkpoints(tmp_path, capsys):
    runs = [make_run(tmp_path / "runs", "a", mismatch_weight=0.5),
            make_run(tmp_path / "runs", "b", mismatch_weight=0.0)]
    out = tmp_path / "cmp"
    run_app(f"runs=[{tmp_path}/runs/*]", f"out={out}")
    assert str(out) in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == ["best_checkpoints.json", "comparison.csv", "comparison.md", "evaluations.csv",
                     "fid_shapes_oracle.png", "shapes_alignment-color.png", "training.png"]
    assert Image.open(out / "fid_shapes_oracle.png").format == "PNG"

    best = json.loads((out / "best_checkpoints.json").read_text())
    assert best["a"][FID]["val"]["kimg"] == 2.048  # min for fid
    assert best["a"][FID]["val"]["checkpoint"] == str(runs[0] / "checkpoints" / "snapshot-000002.048kimg.pt")
    assert best["a"][ACC]["val"]["kimg"] == 3.072  # max for accuracy
    assert (best["b"][FID]["val_heldout"]["kimg"], best["b"][ACC]["val"]["kimg"]) == (1.024, 2.048)

    csv = pd.read_csv(out / "comparison.csv")
    assert len(csv) == 2 * 2 * 2  # runs × metrics × splits
    row = csv[(csv.run == "b") & (csv.metric == ACC) & (csv.split == "val")].iloc[0]
    assert (row.final_value, row.best_value, row.median_img_per_s) == (0.6, 0.9, 60.0)
    assert set(csv["config.loss.mismatch_weight"]) == {0.5, 0.0}
    md = (out / "comparison.md").read_text()
    assert "| loss.mismatch_weight | 0.5 | 0 |" in md
    assert "**1.5**" in md  # b's best fid [val] is the best of both runs
    assert "![fid_shapes_oracle.png](fid_shapes_oracle.png)" in md


def test_metric_and_split_filters(tmp_path):
    make_run(tmp_path / "runs", "a")
    out = compare(str(tmp_path / "runs" / "a"), tmp_path / "cmp", metrics=["fid"], split="val_heldout")
    csv = pd.read_csv(out / "comparison.csv")
    assert csv[["metric", "split"]].values.tolist() == [[FID, "val_heldout"]]
    with pytest.raises(GanT2IError, match="no metric matches \\['clip'\\]; found: fid_shapes_oracle"):
        compare(str(tmp_path / "runs" / "a"), tmp_path / "cmp2", metrics=["clip"])
    assert not (tmp_path / "cmp2").exists()


def test_single_run_lists_each_evaluated_checkpoint(tmp_path):
    make_run(tmp_path / "runs", "a")
    out = compare([str(tmp_path / "runs" / "a")], tmp_path / "cmp")
    md = (out / "comparison.md").read_text()
    assert md.startswith("# Checkpoints of a")
    rows = [line for line in md.splitlines() if line.startswith(("| 1.024 |", "| 2.048 |", "| 3.072 |"))]
    assert len(rows) == 3
    assert "**2**" in rows[1] and "**0.7 [0.65, 0.75]**" in rows[2]  # best fid at 2, best accuracy at 3
    evals = pd.read_csv(out / "evaluations.csv")
    assert len(evals) == 12 and evals["is_best"].sum() == 4


def test_no_runs_is_one_line_exit_1_and_nothing_written(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gan_t2i.compare", "runs=[nothing/*]", "out=cmp"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: no runs matched nothing/*"]
    assert list(tmp_path.iterdir()) == []  # no out folder, no Hydra log or .hydra either


def test_notebook_is_stripped_and_runs_on_fake_runs(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "strip the notebook outputs"
    assert any('RUNS = os.environ.get("GAN_T2I_RUNS"' in c.source for c in code)
    make_run(tmp_path / "runs", "a", mismatch_weight=0.5)
    make_run(tmp_path / "runs", "b", mismatch_weight=0.0)
    monkeypatch.setenv("GAN_T2I_RUNS", str(tmp_path / "runs" / "*"))
    NotebookClient(nb, kernel_name="python3", timeout=120,
                   resources={"metadata": {"path": str(ROOT / "experiments")}}).execute()
    text = json.dumps([c.outputs for c in nb.cells if c.cell_type == "code"])
    assert "2 run(s): a, b" in text
    assert "loss.mismatch_weight" in text  # config differences shown
    assert text.count("image/png") >= 2 + 2 + 2  # stats plots, metric plots, sample grids
    assert "snapshot-000002.048kimg.pt" in text  # the comparison table's best fid checkpoint

