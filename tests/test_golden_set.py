"""The golden set: balanced rows of the eval candidates, the assistant message as gt_text, drawn once by seed."""

from __future__ import annotations

import json
import runpy
from collections import Counter

import pytest
from conftest import REPO

from vlqc.errors import VlqcError
from vlqc.evaluation.golden import GOLDEN_FIELDS, golden_set
from vlqc.jsonl import read_jsonl, write_jsonl


def script(name: str):
    return runpy.run_path(str(REPO / "scripts" / name))["main"]


def candidate(i: int, bucket: str, mode: str = "summary") -> dict:
    images = [] if mode == "verdict" else [f"images/m/g{i}/{i}.jpg"]
    user = "工单摘要" if mode == "verdict" else "<image>总结这张图片。"
    return {
        "id": f"{mode}:s{i}",
        "mode": mode,
        "bucket": bucket,
        "label_len": {"short": 10, "medium": 60, "long": 150}[bucket],
        "images": images,
        "messages": [
            {"role": "system", "content": "你是质检助手。"},
            {"role": "user", "content": user},
            {"role": "assistant", "content": f"answer {i}"},
        ],
        "source": f"s{i}",
    }


CANDIDATES = (
    [candidate(i, "short") for i in range(10)]
    + [candidate(i, "medium", "verdict") for i in range(10, 14)]  # too few: long fills in
    + [candidate(i, "long", "dense") for i in range(14, 30)]
)


def test_rows_are_balanced_and_carry_the_target_as_gt_text():
    rows = golden_set(CANDIDATES, 15, seed=23, where="c.jsonl")
    assert Counter(row["bucket"] for row in rows) == {"short": 5, "medium": 4, "long": 6}
    by_id = {c["id"]: c for c in CANDIDATES}
    for row in rows:
        assert tuple(row) == GOLDEN_FIELDS
        source = by_id[row["id"]]
        assert row["gt_text"] == source["messages"][2]["content"]
        assert {k: row[k] for k in ("images", "bucket", "label_len", "mode", "messages")} == {
            k: source[k] for k in ("images", "bucket", "label_len", "mode", "messages")
        }
    assert golden_set(CANDIDATES, 15, seed=23, where="c.jsonl") == rows, "the same seed draws the same rows"
    assert golden_set(CANDIDATES, 15, seed=24, where="c.jsonl") != rows


def test_fewer_candidates_than_golden_rows_is_an_error_naming_the_file():
    with pytest.raises(VlqcError, match=r"c\.jsonl: 30 candidates, fewer than the 64 golden rows"):
        golden_set(CANDIDATES, 64, seed=23, where="c.jsonl")


def test_script_writes_a_schema_checked_golden_file(tmp_path, capsys):
    write_jsonl(tmp_path / "candidates.jsonl", CANDIDATES, schema="eval_row")
    out = tmp_path / "golden6.jsonl"
    argv = ["--candidates", str(tmp_path / "candidates.jsonl"), "--rows", "6", "--out", str(out)]
    assert script("golden_set.py")([*argv, "--settings", '{"golden_seed": 5}']) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 6 and summary["by_bucket"] == {"short": 2, "medium": 2, "long": 2}
    rows = list(read_jsonl(out, "golden_row"))
    assert rows == golden_set(CANDIDATES, 6, seed=5, where="")


def test_script_names_the_candidates_file_and_line_of_a_bad_row(tmp_path, capsys):
    bad = [*CANDIDATES[:3], {**CANDIDATES[3], "bucket": "tiny"}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in bad), encoding="utf-8")
    argv = [
        "--candidates",
        str(tmp_path / "c.jsonl"),
        "--rows",
        "3",
        "--out",
        str(tmp_path / "g.jsonl"),
        "--settings",
        "{}",
    ]
    assert script("golden_set.py")(argv) == 1
    assert f"{tmp_path / 'c.jsonl'}:4: bucket" in capsys.readouterr().err
    assert not (tmp_path / "g.jsonl").exists()
