"""Shared fixtures: composed configs and a prepared tiny shapes dataset."""

from __future__ import annotations

import json
import os
import string
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


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A random tiny CLIP model + processor saved like a hub download (character-level BPE)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny_clip")
    chars = list(string.ascii_lowercase + string.digits + ",.:;'-")
    vocab = {tok: i for i, tok in enumerate(["<|startoftext|>", "<|endoftext|>"] + chars
                                            + [c + "</w>" for c in chars])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    import torch

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    return folder
