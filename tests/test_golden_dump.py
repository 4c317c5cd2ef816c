"""Golden dumps: one answer per golden row, decoded with fixed seeded settings; a full step or a LoRA step."""

from __future__ import annotations

import json
import runpy

import pytest
from conftest import REPO
from PIL import Image

from vlqc.evaluation.candidates import token_counter
from vlqc.evaluation.golden import GOLDEN_FIELDS, dump_checkpoint, dump_rows, sha256
from vlqc.inference.sampling import Sampling
from vlqc.jsonl import read_jsonl, write_jsonl
from vlqc.schemas import defaults
from vlqc.train.config import load_train_config

SETTINGS = defaults("config", "eval.golden_decoding")


def golden_row(i: int, mode: str, images: list[str]) -> dict:
    user = "<image>总结这张图片。" if images else "工单各图片摘要：无。"
    return {
        "id": f"{mode}:row{i}",
        "images": images,
        "gt_text": f"answer {i}",
        "bucket": "short",
        "label_len": 2,
        "mode": mode,
        "messages": [
            {"role": "system", "content": "你是质检助手。"},
            {"role": "user", "content": user},
            {"role": "assistant", "content": f"answer {i}"},
        ],
    }


def test_rows_keep_the_golden_fields_and_hash_the_answer_batched_as_set():
    golden = [golden_row(i, "verdict", []) for i in range(5)]
    calls = []

    def generate(requests, sampling):
        calls.append((len(requests), sampling))
        return [f"pred {r}\n答" for r in requests]

    rows = dump_rows(generate, lambda row: row["id"], len, golden, {**SETTINGS, "batch_size": 2})
    assert [n for n, _ in calls] == [2, 2, 1]
    assert {s for _, s in calls} == {Sampling(max_new_tokens=64, temperature=0.2, top_p=0.9, seed=0)}
    for row, source in zip(rows, golden, strict=True):
        assert {k: row[k] for k in GOLDEN_FIELDS} == source
        assert row["pred_text"] == f"pred {source['id']}\n答"
        assert row["pred_tokens_len"] == len(row["pred_text"])
        assert row["pred_sha256"] == sha256(row["pred_text"])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A golden set of two photos of different sizes and a text-only row, and the demo config (its cap)."""
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    Image.new("RGB", (640, 480), (200, 40, 40)).save(root / "images/a.jpg")
    Image.new("RGB", (300, 900), (40, 40, 200)).save(root / "images/b.png")
    golden = [
        golden_row(0, "summary", ["images/a.jpg"]),
        golden_row(1, "verdict", []),
        golden_row(2, "dense", ["images/b.png"]),
    ]
    write_jsonl(root / "golden3.jsonl", golden, "golden_row")
    return root, golden, load_train_config(REPO / "config/train/demo.yaml")


@pytest.fixture(scope="module")
def lora_step(tiny_dir, tmp_path_factory):
    """A LoRA adapter on the tiny model whose weights are not the identity (peft's test init)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    folder = tmp_path_factory.mktemp("lora") / "step_2"
    get_peft_model(model, config).save_pretrained(folder)
    return folder


SMALL = {**SETTINGS, "max_new_tokens": 6, "batch_size": 2}


def test_a_dump_is_reproducible_and_a_lora_step_answers_with_its_adapter(tiny_dir, lora_step, dataset):
    root, golden, cfg = dataset
    base = dump_checkpoint(tiny_dir, tiny_dir, cfg, golden, root, SMALL)  # a full step: the base model itself
    assert dump_checkpoint(tiny_dir, tiny_dir, cfg, golden, root, SMALL) == base
    assert [row["id"] for row in base] == [row["id"] for row in golden]
    count = token_counter(tiny_dir)  # as label_len is counted (re-encoding may not give the generated count)
    assert all(row["pred_text"] and row["pred_tokens_len"] == count(row["pred_text"]) > 0 for row in base)
    lora = dump_checkpoint(lora_step, tiny_dir, cfg, golden, root, SMALL)
    assert [row["pred_sha256"] for row in lora] != [row["pred_sha256"] for row in base], "the adapter changes answers"
    reseeded = dump_checkpoint(tiny_dir, tiny_dir, cfg, golden, root, {**SMALL, "seed": 1, "temperature": 1.0})
    assert [row["pred_text"] for row in reseeded] != [row["pred_text"] for row in base]


def test_script_writes_the_dump_and_names_a_missing_step(tiny_dir, lora_step, dataset, tmp_path, capsys):
    root, golden, _ = dataset
    main = runpy.run_path(str(REPO / "scripts" / "golden_dump.py"))["main"]
    out = tmp_path / "qual/step_2_golden3.jsonl"
    argv = [
        *("--base", str(tiny_dir), "--config", str(REPO / "config/train/demo.yaml")),
        *("--golden", str(root / "golden3.jsonl"), "--images", str(root), "--out", str(out)),
        *("--settings", json.dumps({"max_new_tokens": 4, "batch_size": 2})),
    ]
    assert main(["--checkpoint", str(lora_step), *argv]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 3
    rows = list(read_jsonl(out, "golden_dump_row"))
    assert [row["id"] for row in rows] == [row["id"] for row in golden]
    assert main(["--checkpoint", str(lora_step.parent / "step_9"), *argv]) == 1
    assert f"{lora_step.parent / 'step_9'}: no such checkpoint folder (saved: step_2)" in capsys.readouterr().err
