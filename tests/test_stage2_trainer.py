"""The Stage-2 AB trainer's own logic: the channel schedule, reading rows out of a collated batch, the answer's
closing tokens (the trainer end to end: tests/test_e2e_stage2.py)."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from vlqc.errors import VlqcError
from vlqc.train.stage2.trainer import IGNORE, is_channel_b, split_rows, split_suffix


@pytest.mark.parametrize("b_ratio", [0.0, 0.1, 0.25, 0.3, 0.5, 0.7, 1.0])
def test_b_steps_so_far_are_always_floor_of_steps_times_ratio(b_ratio):
    b_steps = 0
    for step in range(200):
        b_steps += is_channel_b(step, b_ratio)
        assert b_steps == (step + 1) * Fraction(str(b_ratio)) // 1  # exact: 0.3 × 10 is 3, not 3.0000000000000004


def test_half_ratio_alternates_starting_with_a():
    assert [is_channel_b(s, 0.5) for s in range(6)] == [False, True] * 3


def _batch(side: str) -> dict:
    """Two rows of lengths 5 and 3 (prompt 3 / 2 tokens; token 2 and 6 of an image), one 2×2-patch and one
    1×2-patch image, with their channels."""
    rows = [([1, 2, 3, 40, 41], [IGNORE] * 3 + [40, 41]), ([5, 6, 50], [IGNORE] * 2 + [50])]
    width, pad = 5, 0
    ids, labels, mask = [], [], []
    for row_ids, row_labels in rows:
        fill = width - len(row_ids)
        before, after = (fill, 0) if side == "left" else (0, fill)
        ids.append([pad] * before + row_ids + [pad] * after)
        labels.append([IGNORE] * before + row_labels + [IGNORE] * after)
        mask.append([0] * before + [1] * len(row_ids) + [0] * after)
    grids = torch.tensor([[1, 2, 2], [1, 1, 2]])
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(mask),
        "pixel_values": torch.arange(6 * 3, dtype=torch.float32).reshape(6, 3),
        "image_grid_thw": grids,
        "mm_token_type_ids": torch.isin(torch.tensor(ids), torch.tensor([2, 6])).long(),  # the image tokens
        "channel": ["7", "3"],
    }


@pytest.mark.parametrize("side", ["left", "right"])
def test_split_rows_reads_each_rows_prompt_answer_and_patches(side):
    first, second = split_rows(_batch(side))
    assert (first["prompt_ids"], first["answer_ids"]) == ([1, 2, 3], [40, 41])
    assert (second["prompt_ids"], second["answer_ids"], second["input_ids"]) == ([5, 6], [50], [5, 6, 50])
    assert first["pixel_values"].shape[0] == 4 and second["pixel_values"].shape[0] == 2
    assert second["pixel_values"][0, 0].item() == 12  # the patches after the first image's four
    assert second["image_grid_thw"].tolist() == [[1, 1, 2]]
    assert first["mm_token_type_ids"].tolist() == [0, 1, 0, 0, 0] and second["mm_token_type_ids"].tolist() == [0, 1, 0]
    assert (first["channel"], second["channel"]) == ("7", "3")


def test_split_rows_refuses_rows_without_one_image_each():
    batch = _batch("right")
    batch["image_grid_thw"] = batch["image_grid_thw"][:1]
    with pytest.raises(VlqcError, match="one image a row"):
        split_rows(batch)


@pytest.fixture(scope="module")
def tokenizer():
    from vlqc.train.tokenizer import build_qwen_tokenizer

    return build_qwen_tokenizer()


def test_split_suffix_keeps_the_json_and_returns_the_closing_special_tokens(tokenizer):
    answer_text = '<DOMAIN=BBU>, <TASK=DETECTION>\n{"object_1": {"bbox_2d": [1, 2, 3, 4], "desc": "类别=BBU设备"}}'
    text = tokenizer.encode(answer_text)
    closing = tokenizer.convert_tokens_to_ids(["<|im_end|>"]) + tokenizer.encode("\n")
    answer, suffix = split_suffix(text + closing, tokenizer)
    assert (answer, suffix) == (text, closing)
