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
def test_sampler_draws_from_the_nucleus_of_the_transformers_warpers(temperature, top_p, spread):
    """Peaked rows take the short path, flat ones (spread 0.01: the nucleus is most of the vocabulary) the sort."""
    import torch
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    from vlqc.inference.generation import NucleusSampler

    scores = torch.randn(4, 5000, generator=torch.Generator().manual_seed(1)) * spread
    nucleus = ~TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, scores.clone())).isinf()
    sampler = NucleusSampler(temperature, top_p)
    torch.manual_seed(0)
    draws = []
    for _ in range(50):
        out = sampler(None, scores.clone())
        assert ((out == 0).sum(dim=-1) == 1).all() and (out.isinf().sum(dim=-1) == 4999).all(), "one token per row"
        draws.append(out.argmax(dim=-1))
    drawn = torch.stack(draws, dim=1)  # row → its 50 draws
    assert nucleus.gather(-1, drawn).all(), "every draw lies in the nucleus"
    assert nucleus.sum() < nucleus.numel(), "the nucleus left tokens out"
    torch.manual_seed(0)
    assert torch.equal(sampler(None, scores.clone()).argmax(dim=-1), drawn[:, 0]), "seeded: the same draws"


def test_sampler_draws_every_token_of_the_nucleus_at_its_odds():
    import torch

    from vlqc.inference.generation import NucleusSampler

    logits = torch.full((1, 1000), -30.0)
    logits[0, [7, 3, 500, 9]] = torch.tensor([0.6, 0.3, 0.1, 0.0001]).log()  # top_p 0.95: 7, 3 and 500
    torch.manual_seed(0)
    counts = torch.bincount(
        torch.cat([NucleusSampler(1.0, 0.95)(None, logits).argmax(dim=-1) for _ in range(2000)]), minlength=1000
    )
    assert set(counts.nonzero().flatten().tolist()) == {3, 7, 500}
    assert 1000 < counts[7] < 1400 and 450 < counts[3] < 750 and 120 < counts[500] < 290  # 1200, 600, 200 expected


def test_seeded_sampling_is_reproducible_and_the_seed_matters(generator):
    request = Request("你是质检助手。", "<image>总结这张图片。", [Image.new("RGB", (96, 64), (200, 30, 30))])
    sampling = Sampling(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=5)
    got = generator.generate([request, request], sampling)
    assert got == generator.generate([request, request], sampling)
    assert got != generator.generate(
        [request, request], Sampling(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=6)
    )
    assert got[0] != got[1], "rows of a batch draw apart"
