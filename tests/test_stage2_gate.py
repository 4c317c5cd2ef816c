"""The Stage-2 length gate (vlqc.train.stage2.gate, docs/stage2.md): prompt + rollout.max_new_tokens within the
base model's max_position_embeddings for every row, by hand and with the prompt lengths ms-swift's template gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image

from vlqc.errors import VlqcError
from vlqc.train.config import load_train_config
from vlqc.train.over_length import length_counter
from vlqc.train.stage2.gate import check_lengths


def model_dir(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture
def qwen3_vl(tmp_path) -> Path:
    """A model folder whose language model has 100 positions (Qwen3-VL keeps them in text_config)."""
    return model_dir(
        tmp_path / "model", {"max_position_embeddings": 99999, "text_config": {"max_position_embeddings": 100}}
    )


def test_a_prompt_that_leaves_exactly_max_new_tokens_passes_and_the_report_says_so(qwen3_vl):
    files = {Path("train.jsonl"): [{"prompt": 36}, {"prompt": 10}], Path("val.jsonl"): [{"prompt": 20}]}
    report = check_lengths(files, lambda row: row["prompt"], 64, qwen3_vl)
    assert report == {
        "max_position_embeddings": 100,  # text_config's, not the top level's
        "max_new_tokens": 64,
        "files": {"train.jsonl": {"rows": 2, "longest_prompt": 36}, "val.jsonl": {"rows": 1, "longest_prompt": 20}},
    }


def test_rows_that_leave_no_room_are_named_with_file_row_and_numbers(qwen3_vl):
    files = {
        Path("data/train.jsonl"): [{"prompt": 36}, {"prompt": 37}, {"prompt": 5}, {"prompt": 90}],
        Path("data/val.jsonl"): [{"prompt": 10}],
    }
    with pytest.raises(VlqcError) as error:
        check_lengths(files, lambda row: row["prompt"], 64, qwen3_vl)
    message = str(error.value)
    assert "stage2_ab.rollout.max_new_tokens 64 must fit max_position_embeddings 100" in message
    assert str(qwen3_vl / "config.json") in message
    assert (
        "data/train.jsonl: 2 of 4 rows: row 1: prompt 37 + 64 = 101 tokens; row 3: prompt 90 + 64 = 154 tokens"
        in message
    )
    assert "row 0" not in message and "val.jsonl" not in message


def test_only_the_first_rows_of_a_file_are_listed(qwen3_vl):
    rows = [{"prompt": 50}] * 25
    with pytest.raises(VlqcError, match=r"25 of 25 rows: row 0: .*; row 9: prompt 50 \+ 64 = 114 tokens$"):
        check_lengths({Path("train.jsonl"): rows}, lambda row: row["prompt"], 64, qwen3_vl)


def test_a_model_config_without_positions_or_missing_is_an_error(tmp_path):
    bare = model_dir(tmp_path / "bare", {"text_config": {}})
    with pytest.raises(VlqcError, match=r"bare/config.json: gives no max_position_embeddings"):
        check_lengths({Path("t.jsonl"): [{"prompt": 1}]}, lambda row: row["prompt"], 8, bare)
    with pytest.raises(VlqcError, match=r"absent/config.json: cannot read the model config"):
        check_lengths({Path("t.jsonl"): [{"prompt": 1}]}, lambda row: row["prompt"], 8, tmp_path / "absent")


# --- prompt lengths as ms-swift's template encodes them ----------------------------------------------------


def dense_row(n: int, image: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "你是通信安装质检员。"},
            {"role": "user", "content": "<image>检测图中所有对象。"},
            {"role": "assistant", "content": '{"objects": [{"desc": "BBU设备", "bbox_2d": [10, 20, 300, 400]}]}' * n},
        ],
        "images": [image],
        "meta": {"mode": "dense", "epoch": 0, "split": "demo/train", "index": n, "source": f"s{n}"},
    }


def test_the_prompt_is_every_token_before_the_answer_the_generation_prompt_of_a_rollout(tiny_dir, tmp_path):
    """The measured prompt is what a rollout starts from: the row without its answer, encoded with the
    generation prompt, gives exactly that many tokens; the answer's tokens make up the rest of the row."""
    from swift import get_processor, get_template

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (96, 64), (30, 90, 200)).save(data / "images/a.jpg")
    cfg = load_train_config(REPO / "config/train/stage2_demo.yaml")
    lengths = length_counter(tiny_dir, data, cfg)
    short, long = dense_row(1, "images/a.jpg"), dense_row(3, "images/a.jpg")
    assert lengths.prompt(short) == lengths.prompt(long) and lengths(long) > lengths(short)

    processor = get_processor(str(tiny_dir), model_type="qwen3_vl")
    template = get_template(processor, template_type="qwen3_vl", max_length=None)
    template.set_mode("transformers")  # inference: the prompt ends with the assistant's generation prompt
    for row in (short, long):
        asked = {"messages": row["messages"][:-1], "images": [str(data / "images/a.jpg")]}
        prompt_ids = template.encode(asked)["input_ids"]
        assert lengths.prompt(row) == len(prompt_ids)
        answer_ids = processor.tokenizer(row["messages"][-1]["content"], add_special_tokens=False)["input_ids"]
        # The row: prompt, answer, then <|im_end|> and the newline after it.
        assert lengths(row) == len(prompt_ids) + len(answer_ids) + 2
