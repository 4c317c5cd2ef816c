"""Batched generation pads on the left: each row equals that request generated alone."""

from __future__ import annotations

import pytest
from PIL import Image

from vlqc.inference.generation import Generator, Request, Sampling
from vlqc.train.base_model import build_tiny_base


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base") / "tiny"
    build_tiny_base(folder, sizes=None, seed=3)
    return Generator(folder, max_pixels=147456)


def test_padding_side_is_left_even_after_reload(generator):
    assert generator.processor.tokenizer.padding_side == "left"


def test_batch_of_different_image_sizes_equals_one_by_one(generator):
    requests = [
        Request("你是质检助手。", "<image>总结这张图片。", [Image.new("RGB", (96, 64), (200, 30, 30))]),
        Request(
            "你是质检助手。", "<image>这张图片里有什么？请仔细回答。", [Image.new("RGB", (320, 256), (30, 200, 30))]
        ),
        Request("你是质检助手。", "只有文字的问题。", []),
    ]
    sampling = Sampling(max_new_tokens=10)
    batched = generator.generate(requests, sampling)
    alone = [generator.generate([r], sampling)[0] for r in requests]
    assert batched == alone
    assert all(batched), "every row produced text"
    batch = generator.encode(requests)
    pad = generator.processor.tokenizer.pad_token_id
    assert (batch["input_ids"][:, -1] != pad).all(), "prompts end flush right (left padding)"


def test_image_count_must_match_tags(generator):
    with pytest.raises(Exception, match="<image> tags"):
        generator.generate([Request("", "<image><image>", [Image.new("RGB", (64, 64))])])
