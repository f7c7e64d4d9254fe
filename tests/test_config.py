"""Every config group composes; a mistyped key fails at compose time, naming the key."""

from __future__ import annotations

import pytest
from conftest import CONF, compose
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if option == "coco" or option.startswith("coco"):
        overrides += ["data.annotations=/x.json", "data.images=/x"]
    cfg = compose(overrides)
    assert cfg.data.resolution >= 8
    if group == "experiment":
        assert cfg.name == option
    elif group == "conditioning":  # ablation presets set D and loss keys globally
        assert cfg.discriminator.projection == (option != "no_text_d")
        assert (cfg.loss.mismatch_weight > 0) == (option == "projection_matching")
    elif group == "swaps":  # word-swap presets set text and loss keys globally
        assert bool(cfg.text.swap_groups) == (option != "none")
        assert (cfg.loss.swap_weight > 0) == (option != "none")
    else:
        assert group in cfg


def test_defaults_resolve_to_shapes_minilm():
    cfg = compose([])
    assert cfg.data.name == "shapes" and cfg.text.model == "minilm"


def test_coco_without_annotations_is_one_clear_error(tmp_path):
    from gan_t2i.config import to_plain
    from gan_t2i.data import prepare_store
    from gan_t2i.utils import GanT2IError

    data = to_plain(compose(["data=coco"]).data)
    with pytest.raises(GanT2IError, match="data.annotations is required for data=coco"):
        prepare_store(data, tmp_path)


@pytest.mark.parametrize("override,key", [
    ("data.resolutoin=32", "resolutoin"),
    ("train.totl_kimg=5", "totl_kimg"),
    ("generator.chanel_max=3", "chanel_max"),
    ("loss.r1_gama=1", "r1_gama"),
])
def test_mistyped_key_fails_naming_it(override, key):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as info:
        compose([override])
    assert key in str(info.value) + str(info.value.__cause__)


def test_wrong_type_fails_at_compose():
    with pytest.raises(ConfigCompositionException) as info:
        compose(["data.resolution=big"])
    assert "resolution" in str(info.value) + str(info.value.__cause__)


def test_bad_enum_value_fails():
    with pytest.raises(ConfigCompositionException):
        compose(["data.on_bad_image=ignore"])
