"""scripts/golden_diff.py: which golden answers changed between two dumps, as a table or JSON; bad input named."""

from __future__ import annotations

import json
import runpy

import pytest
from conftest import REPO

from vlqc.evaluation.golden import sha256
from vlqc.jsonl import write_jsonl

MAIN = runpy.run_path(str(REPO / "scripts" / "golden_diff.py"))


def dump_row(i: int, pred: str, bucket: str = "short") -> dict:
    return {
        "id": f"summary:BBU安装方式检查（正装）/审核通过/G{i}/G{i}_1",
        "images": [f"images/G{i}_1.jpg"],
        "gt_text": f"truth {i}",
        "bucket": bucket,
        "label_len": 12,
        "mode": "summary",
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "<image>u"},
            {"role": "assistant", "content": f"truth {i}"},
        ],
        "pred_text": pred,
        "pred_tokens_len": 3,
        "pred_sha256": sha256(pred),
    }


@pytest.fixture
def dumps(tmp_path):
    before, after = tmp_path / "step_2_golden3.jsonl", tmp_path / "step_3_golden3.jsonl"
    long_answer = "<DOMAIN=BBU>, <TASK=SUMMARY>\n" + '{"统计": [{"类别": "BBU设备", "品牌": {"华为": 1}}]}' * 3
    write_jsonl(before, [dump_row(0, "same"), dump_row(1, "old\nanswer", "long"), dump_row(2, "x")], "golden_dump_row")
    write_jsonl(after, [dump_row(0, "same"), dump_row(1, long_answer, "long"), dump_row(2, "x")], "golden_dump_row")
    return before, after, long_answer


def test_table_lists_the_changed_answers_only(dumps, capsys):
    before, after, _ = dumps
    assert MAIN["main"]([str(before), str(after)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"1 of 3 golden answers changed from {before} to {after}"
    assert lines[1].split() == ["id", "bucket", "before", "after"]
    assert "G1_1" in lines[3] and "long" in lines[3] and "old⏎answer" in lines[3] and "G0_1" not in "".join(lines)
    assert lines[3].endswith("…"), "a long answer is cut"
    cut = lines[3].split("old⏎answer")[1].strip()
    assert MAIN["width"](cut) <= MAIN["CELL"] and cut.startswith("<DOMAIN=BBU>")
    # Columns line up although the ids are Chinese (two columns a character).
    assert MAIN["width"](lines[1].split("before")[0]) == MAIN["width"](lines[3].split("old⏎answer")[0])


def test_json_gives_full_texts_and_hashes(dumps, capsys):
    before, after, long_answer = dumps
    assert MAIN["main"]([str(before), str(after), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rows"] == 3 and [row["id"] for row in doc["changed"]] == [dump_row(1, "").get("id")]
    change = doc["changed"][0]
    assert (change["before"], change["after"], change["bucket"]) == ("old\nanswer", long_answer, "long")
    assert change["after_sha256"] == sha256(long_answer) != change["before_sha256"]


def test_unchanged_dumps_say_so(dumps, capsys):
    before, _, _ = dumps
    assert MAIN["main"]([str(before), str(before)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"0 of 3 golden answers changed from {before} to {before}"]


def test_dumps_of_different_golden_sets_are_refused_naming_both(dumps, tmp_path, capsys):
    before, _, _ = dumps
    other = tmp_path / "other.jsonl"
    write_jsonl(other, [dump_row(0, "same"), dump_row(5, "y"), dump_row(2, "x")], "golden_dump_row")
    assert MAIN["main"]([str(before), str(other)]) == 1
    err = capsys.readouterr().err
    assert f"{before} and {other} are dumps of different golden sets: row 2" in err
    write_jsonl(other, [dump_row(0, "same")], "golden_dump_row")
    assert MAIN["main"]([str(before), str(other)]) == 1
    assert f"{before} has 3 rows, {other} 1" in capsys.readouterr().err


def test_a_malformed_dump_is_named_with_its_line(dumps, tmp_path, capsys):
    before, _, _ = dumps
    broken = tmp_path / "broken.jsonl"
    row = dump_row(1, "z")
    del row["pred_sha256"]
    broken.write_text(json.dumps(dump_row(0, "a")) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    assert MAIN["main"]([str(before), str(broken)]) == 1
    assert f"{broken}:2: <top level>: 'pred_sha256' is a required property" in capsys.readouterr().err
    broken.write_text(json.dumps({**dump_row(0, "a"), "pred_text": "edited"}) + "\n", encoding="utf-8")
    assert MAIN["main"]([str(broken), str(before)]) == 1
    assert f"{broken}: row 1 (" in (err := capsys.readouterr().err) and "not the sha256 of its pred_text" in err
    broken.write_text("{not json\n", encoding="utf-8")
    assert MAIN["main"]([str(before), str(broken)]) == 1
    assert f"{broken}:1: not valid JSON" in capsys.readouterr().err
