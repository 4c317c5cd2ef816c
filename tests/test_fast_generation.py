"""FastGenerator's greedy path gives Generator's outputs token for token (tiny model, CPU)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from test_stage_a_infer import make_groups
from test_stage_a_infer import run as run_stage_a
from torch._dynamo.utils import counters
from transformers.models.qwen3_vl import modeling_qwen3_vl as qwen3_vl

from vlqc.inference.fast_generation import FUSED_FUNCTIONS, FastGenerator, cut_at_stop, plan_waves
from vlqc.inference.generation import Generator, Request, Sampling
from vlqc.stage_a.infer import Settings
from vlqc.train.base_model import build_tiny_base

MAX_PIXELS = 147456
SAMPLING = Sampling(max_new_tokens=12)


def sharpen(model: torch.nn.Module) -> None:
    """Seeded, larger decoder weights: the random tiny model otherwise repeats one token forever, which would
    hide a wrong position, mask or cache column; with these the next token depends on all of them."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.model.language_model.layers.parameters():
            if param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base") / "tiny"
    build_tiny_base(folder, sizes=None, seed=3)
    return folder


@pytest.fixture(scope="module")
def engines(tiny_folder):
    plain, fast = Generator(tiny_folder, max_pixels=MAX_PIXELS), FastGenerator(tiny_folder, max_pixels=MAX_PIXELS)
    for engine in (plain, fast):
        sharpen(engine.model)
    defaults = Settings()  # the stage_a settings' defaults, as run_rank would set them
    fast.max_wave_rows, fast.memory_fraction, fast.compile = (
        defaults.wave_rows,
        defaults.wave_memory_fraction,
        defaults.compile,
    )
    return plain, fast


@pytest.fixture
def requests():
    """Different image sizes and prompt lengths, one text-only; input order is not length order."""
    return [
        Request("你是质检助手。", "<image>总结这张图片。", [Image.new("RGB", (96, 64), (200, 30, 30))]),
        Request(
            "你是质检助手。", "<image>这张图片里有什么？请仔细回答。", [Image.new("RGB", (320, 256), (30, 200, 30))]
        ),
        Request("你是质检助手。", "只有文字的问题。", []),
        Request("系统", "<image>数一数。", [Image.new("RGB", (200, 480), (10, 20, 230))]),
        Request("你是通信安装质检助手。", "<image>描述", [Image.new("RGB", (640, 400), (120, 120, 20))]),
        Request("", "<image>?", [Image.new("RGB", (64, 64), (0, 0, 0))]),
    ]


def stop_also_on(monkeypatch, engines, tokens: list[int]) -> None:
    for engine in engines:
        config = engine.model.generation_config
        monkeypatch.setattr(config, "eos_token_id", [*config.eos_token_id, *tokens])


def test_greedy_equals_plain_generate_across_waves_chunks_and_stops(engines, requests, monkeypatch):
    plain, fast = engines
    free = fast.reference_ids(requests, SAMPLING)
    # Row 3 stops on its first token (chosen in the prefill), rows 1 and 5 on their fourth; the rest run to the limit.
    stop_also_on(monkeypatch, engines, [free[3][0], free[1][3], free[5][3]])
    monkeypatch.setattr(fast, "max_wave_rows", 4)
    monkeypatch.setattr(fast, "prefill_tokens", 250)

    expected = plain.generate(requests, SAMPLING)
    assert fast.generate(requests, SAMPLING) == expected
    ids = fast.generate_ids(requests, SAMPLING)
    assert ids == fast.reference_ids(requests, SAMPLING)

    lengths = [len(row) for row in ids]
    assert lengths[3] == 1 and lengths[1] == lengths[5] == 4 and lengths.count(SAMPLING.max_new_tokens) == 3
    stats = fast.stats
    assert stats.fast and stats.waves == 2 and stats.chunks > stats.waves and stats.compactions >= 1
    assert all(expected), "every row produced text"


def test_min_new_tokens_holds_stop_tokens_back_in_both_paths(engines, requests, monkeypatch):
    plain, fast = engines
    free = fast.reference_ids(requests, SAMPLING)
    stop_also_on(monkeypatch, engines, [row[0] for row in free])  # every row would stop at once
    for engine in engines:
        monkeypatch.setattr(engine.model.generation_config, "min_new_tokens", SAMPLING.max_new_tokens)
    ids = fast.generate_ids(requests, SAMPLING)
    assert ids == fast.reference_ids(requests, SAMPLING)
    assert all(len(row) == SAMPLING.max_new_tokens for row in ids)
    assert fast.generate(requests, SAMPLING) == plain.generate(requests, SAMPLING)


def test_compiled_small_ops_keep_greedy_outputs_and_are_undone_after_the_call(engines, requests, monkeypatch):
    _, fast = engines
    eager = {name: getattr(qwen3_vl, name) for name in FUSED_FUNCTIONS}
    seen = []
    record_rope = qwen3_vl.Qwen3VLTextRotaryEmbedding.forward

    def rope_and_look(module, *args, **kwargs):  # runs inside the call: are the compiled ops in place?
        norm = fast.model.model.language_model.norm
        seen.append(("forward" in vars(norm), qwen3_vl.apply_rotary_pos_emb is not eager["apply_rotary_pos_emb"]))
        return record_rope(module, *args, **kwargs)

    monkeypatch.setattr(qwen3_vl.Qwen3VLTextRotaryEmbedding, "forward", rope_and_look)
    monkeypatch.setattr(fast, "compile", "always")
    monkeypatch.setattr(fast, "max_wave_rows", 4)
    graphs = counters["stats"]["unique_graphs"]
    assert fast.generate_ids(requests, SAMPLING) == fast.reference_ids(requests, SAMPLING)
    assert counters["stats"]["unique_graphs"] > graphs, "dynamo compiled nothing: the ops ran eager"
    assert seen and all(seen[0]) and seen[-1] == (False, False)  # the reference ran eager
    assert {name: getattr(qwen3_vl, name) for name in FUSED_FUNCTIONS} == eager
    assert not any("forward" in vars(module) for module in fast.model.modules())


def test_a_greedy_call_needs_the_wave_settings_from_the_caller(tiny_folder, requests):
    fast = FastGenerator(tiny_folder, max_pixels=MAX_PIXELS)
    fast.max_wave_rows = 4
    with pytest.raises(ValueError, match="set FastGenerator's memory_fraction, compile before a greedy call"):
        fast.generate_ids(requests, SAMPLING)


def test_an_unknown_compile_choice_is_an_error(engines, requests, monkeypatch):
    _, fast = engines
    monkeypatch.setattr(fast, "compile", "sometimes")
    with pytest.raises(ValueError, match="compile must be one of"):
        fast.generate_ids(requests, SAMPLING)


@pytest.mark.parametrize("sampling", [Sampling(6, temperature=0.8, seed=5), Sampling(6, repetition_penalty=1.3)])
def test_sampling_and_penalties_take_the_plain_path(engines, requests, sampling):
    plain, fast = engines
    assert fast.plain_path_reasons(sampling)
    assert fast.generate(requests, sampling) == plain.generate(requests, sampling)
    assert not fast.stats.fast


def test_run_rank_takes_the_fast_engine_unchanged(tiny_folder, tmp_path):
    groups = make_groups(tmp_path, [3, 2])
    settings = Settings(batch_size=8, max_new_tokens=8, wave_rows=2)
    rows = {}
    made = []
    for name, backend in (("plain", Generator), ("fast", FastGenerator)):
        (tmp_path / name).mkdir()

        def load(*args, backend=backend, **kwargs):
            made.append(backend(*args, **kwargs))
            return made[-1]

        rows[name], _ = run_stage_a(groups, tmp_path / name, tiny_folder, load, settings=settings)
    assert len(rows["plain"]) == 5 and rows["fast"] == rows["plain"]
    # The settings' wave size reached the engine: the last call's 2 images went in one wave of 2.
    assert made[1].max_wave_rows == 2 and made[1].stats.wave_rows == [2]


def test_prompt_length_is_what_encode_makes(engines, requests):
    _, fast = engines
    assert [fast.prompt_length(r) for r in requests] == [fast.encode([r])["input_ids"].shape[1] for r in requests]


def test_plan_waves_goes_longest_first_within_row_and_token_budgets():
    lengths = [30, 100, 10, 100, 60, 45, 80]
    waves = plan_waves(lengths, rows_for=lambda longest: 600 // longest, prefill_tokens=200)
    order = [row for wave in waves for row in wave.rows]
    assert sorted(order) == list(range(len(lengths)))
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
    assert order[:2] == [1, 3], "equal lengths keep their input order"
    for wave in waves:
        assert wave.prompt_len == lengths[wave.rows[0]]
        assert len(wave.rows) <= 600 // wave.prompt_len
        assert [row for chunk in wave.chunks for row in chunk] == wave.rows
        assert all(len(chunk) == 1 or len(chunk) * lengths[chunk[0]] <= 200 for chunk in wave.chunks)
    assert [len(w.rows) for w in waves] == [6, 1]


def test_full_prefill_chunks_hold_one_prompt_length():
    lengths = [40] * 5 + [50] * 6 + [30] * 2
    (wave,) = plan_waves(lengths, rows_for=lambda longest: 100, prefill_tokens=1000)
    assert [[lengths[row] for row in chunk] for chunk in wave.chunks] == [[50] * 6, [40] * 5, [30] * 2]
    small = plan_waves([40, 50, 30], rows_for=lambda longest: 100, prefill_tokens=1000)[0].chunks
    assert small == [[1, 0, 2]], "a chunk of few rows takes other lengths rather than running alone"


def test_cut_at_stop_keeps_the_stop_token_and_drops_the_padding():
    assert cut_at_stop([5, 7, 2, 0, 0], {2, 0}) == [5, 7, 2]
    assert cut_at_stop([5, 7, 9], {2}) == [5, 7, 9]
    assert cut_at_stop([2, 2], {2}) == [2]
