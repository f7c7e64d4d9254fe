"""Word-swap hard negatives: the variants, their table, and prepare writing them."""

from __future__ import annotations

import pytest
import torch
from conftest import compose, plain_config

from gan_t2i.data.shapes import ATTRIBUTES, parse_caption
from gan_t2i.prepare import SwapPlan, load_swaps, prepare
from gan_t2i.text.swaps import CaptionSwapper, check_groups
from gan_t2i.training.data import SwapTable
from gan_t2i.utils import GanT2IError

SHAPES_GROUPS = [list(v) for v in ATTRIBUTES.values()]


def test_each_variant_changes_exactly_its_attribute():
    swapper = CaptionSwapper(SHAPES_GROUPS)
    for caption in ("a large red circle in the top left",
                    "in the center of the image sits a small cyan diamond",
                    "the triangle in the bottom right is yellow and small"):
        original = parse_caption(caption)
        variants = swapper.variants(caption)
        assert len(variants) == len(ATTRIBUTES)
        for attr, variant in zip(ATTRIBUTES, variants):
            parsed = parse_caption(variant)
            assert [a for a in ATTRIBUTES if parsed[a] != original[a]] == [attr], variant


def test_variants_are_stable_and_cover_the_group():
    swapper = CaptionSwapper([["red", "green", "blue", "cyan"]])
    captions = [f"a red {noun}" for noun in ("cup", "car", "hat", "box", "dog", "cat", "pen", "map")]
    first = [swapper.variants(c)[0] for c in captions]
    assert first == [CaptionSwapper([["red", "green", "blue", "cyan"]]).variants(c)[0] for c in captions]
    assert {v.split()[1] for v in first} == {"green", "blue", "cyan"}  # never "red" itself
    assert CaptionSwapper([["red", "green", "blue", "cyan"]], seed=1).variants(captions[0]) != [None]


def test_longest_phrase_wins_capitals_stay_and_absent_groups_give_none():
    swapper = CaptionSwapper([["left", "top left", "center"], ["red", "blue"]])
    assert swapper.variants("In the top left corner")[0] in ("In the left corner",
                                                             "In the center corner")
    assert swapper.variants("Red ball")[1] == "Blue ball"
    assert swapper.variants("a cat on a mat") == [None, None]
    assert swapper.variants("a redwood tree") == [None, None]  # whole words only


def test_allowed_variants_take_the_next_candidate_or_none():
    swapper = CaptionSwapper([["red", "green", "blue"], ["cup", "car"]])
    free = swapper.variants("a red cup")
    other = next(v for v in ("a green cup", "a blue cup") if v != free[0])
    assert swapper.variants("a red cup", allowed={other, "a red car"}) == [other, "a red car"]
    assert swapper.variants("a red cup", allowed=set()) == [None, None]


def test_known_only_plans_use_only_the_split_s_own_captions():
    swapper = CaptionSwapper([["red", "green", "blue"]])
    captions = ["a red cup", "a green cup", "a red car"]
    plan = SwapPlan.of(captions, swapper, known_only=True)
    assert plan.texts == ["a green cup", "a red cup"]  # never "a blue ..." nor "a green car"
    assert [plan.texts[r] if r >= 0 else None for r in plan.rows[:, 0]] == [
        "a green cup", "a red cup", None]


@pytest.mark.parametrize("groups, message", [
    ([["red"]], "at least two distinct"),
    ([["red", "red"]], "at least two distinct"),
    (["red"], "must be a list of words"),
    ([["red", "blue"], ["blue", "green"]], "is in text.swap_groups"),
])
def test_bad_groups_are_one_line_errors(groups, message):
    with pytest.raises(GanT2IError, match=message):
        check_groups(groups)


def test_plan_rows_follow_every_caption_and_the_table_gives_every_variant():
    swapper = CaptionSwapper([["red", "blue"], ["cup", "car"]])
    captions = ["a red cup", "a tree", "a red cup", "a blue thing"]
    plan = SwapPlan.of(captions, swapper)
    assert plan.rows.shape == (4, 2)
    assert [plan.texts[r] if r >= 0 else None for r in plan.rows[0]] == ["a blue cup", "a red car"]
    assert (plan.rows[1] == -1).all() and (plan.rows[0] == plan.rows[2]).all()
    assert plan.rows[3, 1] == -1 and plan.texts[plan.rows[3, 0]] == "a red thing"
    empty = SwapPlan.of([], swapper)
    assert empty.texts == [] and empty.rows.shape == (0, 2)
    emb = torch.arange(1, len(plan.texts) + 1, dtype=torch.float16)[:, None].repeat(1, 3)
    table = SwapTable(emb, torch.from_numpy(plan.rows).long())
    out, valid = table(torch.tensor([0, 1, 3]))
    assert out.shape == (3, 2, 3)
    assert valid.tolist() == [[True, True], [False, False], [True, False]]
    assert out[:, :, 0].tolist() == [[plan.rows[0, 0] + 1, plan.rows[0, 1] + 1], [0, 0],
                                     [plan.rows[3, 0] + 1, 0]]


def test_prepare_writes_negatives_aligned_with_the_train_captions(tmp_path, smoke_data_dir):
    groups = '[[circle,square,triangle,diamond],[red,green,blue,yellow,purple,cyan]]'
    cfg = plain_config(["experiment=smoke", f"paths.data_dir={smoke_data_dir}",
                        f"text.swap_groups={groups}"], tmp_path)
    prepared = prepare(cfg["data"], cfg["text"], smoke_data_dir, progress=False)
    embeddings, rows = load_swaps(prepared.swaps)
    captions = prepared.store.split("train").captions
    assert rows.shape == (len(captions), 2) and (rows >= 0).all()
    swapper = CaptionSwapper(cfg["text"]["swap_groups"])
    from gan_t2i.sample import encode_prompts, load_text_encoder

    variants = [swapper.variants(c)[0] for c in captions[:3]]
    expected = encode_prompts(load_text_encoder(cfg["text"]["model"]), variants)
    torch.testing.assert_close(embeddings[rows[:3, 0]].float(), expected, atol=2e-3, rtol=0)
    again = prepare(cfg["data"], cfg["text"], smoke_data_dir, progress=False)
    assert again.encoded == 0 and again.swaps == prepared.swaps  # reused


def test_shapes_preset_names_exactly_the_dataset_s_attribute_words():
    cfg = compose(["experiment=shapes_quick"])
    assert [list(g) for g in cfg.text.swap_groups] == SHAPES_GROUPS
    assert cfg.text.swap_known_only and cfg.loss.swap_weight > 0
    plain = compose([])
    assert list(plain.text.swap_groups) == [] and plain.loss.swap_weight == 0
