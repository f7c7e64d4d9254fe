"""`python -m gan_t2i.prepare`: summary, idempotence and one-line errors, through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT


def _run(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "gan_t2i.prepare", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_prepare_shapes_then_reuse(tmp_path):
    args = (f"paths.data_dir={tmp_path}", "data.resolution=16", "data.shapes.num_train=40",
            "data.shapes.num_val=6", "data.shapes.num_val_heldout=6", "progress=false")
    first = _run(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "built" in first.stdout and "train" in first.stdout and "embeddings: dim 384" in first.stdout
    stores = list((tmp_path / "stores").iterdir())
    assert len(stores) == 1
    meta = json.loads((stores[0] / "store.json").read_text())
    assert meta["splits"]["train"]["images"] == 40 and meta["splits"]["train"]["captions"] == 200
    second = _run(*args)
    assert second.returncode == 0
    assert "reused" in second.stdout and "0 newly encoded" in second.stdout


def test_coco_with_missing_annotation_is_one_line(tmp_path):
    result = _run(f"paths.data_dir={tmp_path}", "data=coco", f"data.annotations={tmp_path}/nope.json",
                  f"data.images={tmp_path}")
    assert result.returncode == 1
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert lines == [f"error: data.annotations does not exist: {tmp_path}/nope.json"]
