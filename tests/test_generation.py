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


@pytest.mark.parametrize("temperature, top_p, spread", [(0.2, 0.9, 3.0), (1.0, 0.5, 8.0), (0.7, 0.95, 0.01)])
def test_nucleus_filters_as_the_transformers_warpers_do(temperature, top_p, spread):
    """Peaked rows take the short path, a flat one (spread 0.01: the nucleus is most of the vocabulary) the sort."""
    import torch
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    from vlqc.inference.generation import Nucleus

    scores = torch.randn(4, 5000, generator=torch.Generator().manual_seed(1)) * spread
    want = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, scores.clone()))
    got = Nucleus(temperature, top_p)(None, scores.clone())
    assert torch.equal(got.isinf(), want.isinf())
    assert torch.allclose(got[~got.isinf()], want[~want.isinf()])
    assert 1 <= (~got.isinf()).sum(dim=-1).min() and (~got.isinf()).sum() < got.numel()  # it did filter


def test_seeded_sampling_gives_what_transformers_sampling_gives(generator):
    import torch

    request = Request("你是质检助手。", "<image>总结这张图片。", [Image.new("RGB", (96, 64), (200, 30, 30))])
    sampling = Sampling(max_new_tokens=12, temperature=0.7, top_p=0.9, seed=5)
    got = generator.generate([request], sampling)
    batch = generator.encode([request])
    torch.manual_seed(5)
    with torch.inference_mode():
        ids = generator.model.generate(
            **batch, max_new_tokens=12, do_sample=True, temperature=0.7, top_p=0.9, top_k=None
        )
    assert got == generator.processor.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert got == generator.generate([request], sampling), "the seed makes it reproducible"
