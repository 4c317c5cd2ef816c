"""Over-length rows (vlqc.train.over_length, docs/prompts.md#over-length-rows): the policy by hand,
lengths as ms-swift's template measures and enforces them, and a dataset fitted for the training job."""

from __future__ import annotations

import copy

import pytest
from conftest import REPO
from PIL import Image

from vlqc.errors import VlqcError
from vlqc.jsonl import read_jsonl, write_jsonl
from vlqc.train.config import load_train_config
from vlqc.train.over_length import apply_policy, fit_dataset, length_counter

ROWS = [{"messages": [], "meta": {"mode": "verdict", "source": f"m/g{i}::pass"}} for i in range(6)]
LENGTHS = [10, 50, 20, 60, 30, 40]  # rows 1 and 3 over a limit of 45


def test_resample_redraws_each_over_length_row_from_the_fitting_ones_reproducibly():
    out, report = apply_policy(ROWS, LENGTHS, 45, "resample", redraw=True, seed=7, where="train.jsonl")
    assert len(out) == 6 and [out[i] for i in (0, 2, 4, 5)] == [ROWS[i] for i in (0, 2, 4, 5)]
    assert out[1] in [ROWS[i] for i in (0, 2, 4, 5)] and out[3] in [ROWS[i] for i in (0, 2, 4, 5)]
    assert apply_policy(ROWS, LENGTHS, 45, "resample", redraw=True, seed=7, where="x")[0] == out
    draws = {id(apply_policy(ROWS, LENGTHS, 45, "resample", redraw=True, seed=s, where="x")[0][1]) for s in range(20)}
    assert len(draws) > 1  # the seed picks the row
    assert report == {
        "rows": 6,
        "over_length": 2,
        "redrawn": 2,
        "dropped": 0,
        "max_length": 45,
        "longest": 60,
        "examples": [
            {"index": 1, "length": 50, "mode": "verdict", "source": "m/g1::pass"},
            {"index": 3, "length": 60, "mode": "verdict", "source": "m/g3::pass"},
        ],
    }


def test_val_rows_are_dropped_and_error_names_the_rows():
    out, report = apply_policy(ROWS, LENGTHS, 45, "resample", redraw=False, seed=7, where="val.jsonl")
    assert out == [ROWS[i] for i in (0, 2, 4, 5)] and (report["dropped"], report["redrawn"]) == (2, 0)
    with pytest.raises(VlqcError, match=r"train.jsonl: 2 of 6 rows are longer than global_max_length 45 .*row 3 "):
        apply_policy(ROWS, LENGTHS, 45, "error", redraw=True, seed=7, where="train.jsonl")
    with pytest.raises(VlqcError, match="every row is longer"):
        apply_policy(ROWS, LENGTHS, 5, "resample", redraw=True, seed=7, where="train.jsonl")
    out, report = apply_policy(ROWS, LENGTHS, 60, "error", redraw=True, seed=7, where="train.jsonl")
    assert out == ROWS and report["over_length"] == 0 and report["examples"] == []


# --- with ms-swift's template ------------------------------------------------------------------------


def _row(n: int, mode: str, reason_chars: int) -> dict:
    row = {
        "messages": [
            {"role": "system", "content": "你是通信安装质检员。"},
            {"role": "user", "content": ("<image>输出摘要。" if mode == "summary" else "任务: 挡风板安装检查")},
            {
                "role": "assistant",
                "content": "无关图片" if mode == "summary" else "Verdict: 通过\nReason: " + "好" * reason_chars,
            },
        ],
        "meta": {"mode": mode, "epoch": 0, "split": "demo/train", "index": n, "source": f"s{n}"},
    }
    if mode == "summary":
        row["images"] = [f"images/source/demo/train/s{n}.jpg"]
    return row


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    (folder / "images/source/demo/train").mkdir(parents=True)
    for n in range(2):
        Image.new("RGB", (96, 64), (30 * n, 90, 200)).save(folder / f"images/source/demo/train/s{n}.jpg")
    train = [_row(0, "summary", 0), _row(1, "verdict", 200), _row(2, "verdict", 5), _row(3, "summary", 0)]
    train[3]["images"] = train[0]["images"]
    write_jsonl(folder / "train.jsonl", train, schema="sft_record")
    write_jsonl(folder / "val.jsonl", [_row(4, "verdict", 200), _row(5, "verdict", 5)], schema="sft_record")
    return folder


def test_lengths_are_those_ms_swift_enforces(tiny_dir, data_dir):
    """A row of the measured length passes ms-swift's `raise` template at that max_length and fails one
    token below: the check and ms-swift agree on every row, image rows included."""
    from swift import get_processor, get_template
    from swift.template import MaxLengthError

    cfg = load_train_config(REPO / "config/train/demo.yaml")
    count = length_counter(tiny_dir, data_dir, cfg)
    processor = get_processor(str(tiny_dir), model_type="qwen3_vl")
    for row in read_jsonl(data_dir / "train.jsonl", "sft_record"):
        length = count(row)
        inputs = {
            "messages": row["messages"],
            **({"images": [str(data_dir / p) for p in row["images"]]} if "images" in row else {}),
        }
        for limit, fits in ((length, True), (length - 1, False)):
            template = get_template(processor, template_type="qwen3_vl", max_length=limit, truncation_strategy="raise")
            template.set_mode("train")
            if fits:
                template.encode(copy.deepcopy(inputs))
            else:
                with pytest.raises(MaxLengthError):
                    template.encode(copy.deepcopy(inputs))


def test_a_repeated_row_is_encoded_once(tiny_dir, data_dir, monkeypatch):
    """Epochs repeat rows: the counter measures each distinct row once, and a changed row again."""
    from swift.template import Template

    calls = []
    encode = Template.encode
    monkeypatch.setattr(Template, "encode", lambda self, inputs, **kw: calls.append(1) or encode(self, inputs, **kw))
    count = length_counter(tiny_dir, data_dir, load_train_config(REPO / "config/train/demo.yaml"))
    row = next(iter(read_jsonl(data_dir / "train.jsonl", "sft_record")))
    first = count(row)
    assert count(copy.deepcopy(row)) == first and len(calls) == 1
    changed = copy.deepcopy(row)
    changed["messages"][-1]["content"] += " 以及更多"
    assert count(changed) > first and len(calls) == 2


def test_fit_dataset_redraws_train_drops_val_and_reports(tiny_dir, data_dir, tmp_path):
    cfg = load_train_config(REPO / "config/train/demo.yaml")
    count = length_counter(tiny_dir, data_dir, cfg)
    train = list(read_jsonl(data_dir / "train.jsonl", "sft_record"))
    lengths = [count(row) for row in train]
    assert lengths[1] > max(lengths[0], lengths[2], lengths[3])  # the long verdict
    cfg = copy.deepcopy(cfg)
    cfg["global_max_length"] = lengths[1] - 1
    work = tmp_path / "work"

    train_path, val_path, report = fit_dataset(data_dir, work, tiny_dir, cfg)
    assert (train_path, val_path) == (work / "data/train.jsonl", work / "data/val.jsonl")
    fitted = list(read_jsonl(train_path, "sft_record"))
    assert len(fitted) == 4 and fitted[1] in [train[0], train[2], train[3]] and fitted[::2] == train[::2]
    assert [r["meta"]["index"] for r in read_jsonl(val_path, "sft_record")] == [5]
    assert report["policy"] == "resample"
    assert (report["train"]["over_length"], report["train"]["redrawn"], report["train"]["longest"]) == (
        1,
        1,
        lengths[1],
    )
    assert (report["val"]["over_length"], report["val"]["dropped"], report["val"]["rows"]) == (1, 1, 2)
    assert report["train"]["examples"] == [{"index": 1, "length": lengths[1], "mode": "verdict", "source": "s1"}]

    # Everything fits: the built files are used as they are.
    cfg["global_max_length"] = max(lengths) + 100
    assert fit_dataset(data_dir, tmp_path / "w2", tiny_dir, cfg)[:2] == (
        data_dir / "train.jsonl",
        data_dir / "val.jsonl",
    )
    cfg["global_max_length"] = lengths[1] - 1
    cfg["data"]["over_length"] = "error"
    with pytest.raises(VlqcError, match=r"train.jsonl: 1 of 4 rows are longer .*row 1 \(verdict, s1\)"):
        fit_dataset(data_dir, tmp_path / "w3", tiny_dir, cfg)
