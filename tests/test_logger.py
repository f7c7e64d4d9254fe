"""The logging facade: JSON lines always; wandb only when asked, offline here."""

from __future__ import annotations

import sys

import pytest
from PIL import Image

from gan_t2i.logger import RunLogger
from gan_t2i.utils import read_jsonl


def test_disabled_logger_writes_jsonl_and_never_imports_wandb(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    logger = RunLogger(tmp_path, mode="disabled")
    logger.stats({"kimg": 1.0, "nimg": 1000, "loss_G": 0.5})
    logger.metric({"kimg": 1.0, "metric": "fid", "value": 12.5})
    logger.close()
    assert read_jsonl(tmp_path / "stats.jsonl") == [{"kimg": 1.0, "nimg": 1000, "loss_G": 0.5}]
    assert read_jsonl(tmp_path / "metrics.jsonl")[0]["value"] == 12.5
    assert "wandb" not in sys.modules


def test_non_zero_ranks_write_nothing(tmp_path):
    logger = RunLogger(tmp_path, enabled=False)
    logger.stats({"nimg": 1})
    assert not (tmp_path / "stats.jsonl").exists()


def test_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "stats.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


@pytest.mark.slow
def test_wandb_offline_run_is_written_for_sync(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    grid = tmp_path / "grid.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(grid)
    logger = RunLogger(tmp_path, mode="offline", name="t", config={"train": {"batch_size": 4}})
    logger.stats({"kimg": 0.1, "nimg": 100, "loss_G": 1.0})
    logger.image("samples", grid, nimg=100)
    logger.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert read_jsonl(tmp_path / "stats.jsonl")[0]["loss_G"] == 1.0
