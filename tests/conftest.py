"""Shared fixtures: composed configs and a prepared tiny shapes dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


def compose(overrides: list[str], config_name: str = "config") -> Any:
    """Compose a config the way the apps do (DictConfig, unresolved)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import gan_t2i.config  # noqa: F401  (registers the schema)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


def plain_config(overrides: list[str], output_dir: Path) -> dict[str, Any]:
    """A resolved plain config with its output folder set (no Hydra run needed)."""
    from gan_t2i.config import to_plain

    return to_plain(compose([*overrides, f"paths.output_dir={output_dir}"]))


@pytest.fixture(scope="session")
def smoke_data_dir(tmp_path_factory) -> Path:
    """Data folder with the smoke experiment's shapes store and embeddings built once."""
    from gan_t2i.prepare import prepare

    data_dir = tmp_path_factory.mktemp("data")
    cfg = plain_config(["experiment=smoke", f"paths.data_dir={data_dir}"], data_dir / "unused")
    prepare(cfg["data"], cfg["text"], data_dir, progress=False)
    return data_dir


@pytest.fixture(scope="session")
def coco_fixture(smoke_data_dir) -> tuple[Path, Path]:
    """A COCO-captions JSON and image folder (the smoke shapes, which are written in that format)."""
    raw = next((smoke_data_dir / "raw").glob("shapes-*"))
    return raw / "annotations" / "captions_train.json", raw / "train"
