"""Eval candidates are the rows training builds (all kinds per photo and ticket, no augmentation), with
their label length and bucket; the eval-set draw checks the buckets against the thresholds."""

from __future__ import annotations

import pytest
from test_sft_data import MISSIONS, fixture_records, only, write_canonical

from vlqc.errors import VlqcError
from vlqc.evaluation.buckets import bucket_of
from vlqc.evaluation.candidates import build_candidates, draw_split
from vlqc.schemas import validate
from vlqc.train.sft_data import build_epoch

THRESHOLDS = [40, 120]


def count_chars(text: str) -> int:  # a stand-in tokenizer: one token per character
    return len(text)


@pytest.fixture
def val(tmp_path):
    records = fixture_records()
    return records, write_canonical(tmp_path / "canonical", records, "val.jsonl")


def test_one_row_per_photo_and_mode_and_per_ticket_as_training_builds_them(val, tmp_path):
    records, path = val
    rows = build_candidates(records, MISSIONS, count_chars, THRESHOLDS, ["dense", "summary", "verdict"], path)
    for row in rows:
        validate(row, "eval_row")
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) == 2 * len(records) + 2
    assert ids[:2] == [f"dense:{records[0]['sample_id']}", f"summary:{records[0]['sample_id']}"]
    assert ids[-2:] == ["verdict:挡风板安装检查/QC-A::fail", "verdict:BBU安装方式检查（正装）/QC-B::pass"]
    for mode in ("dense", "summary"):
        # Training's rows of that mode, the mission always named, not augmented.
        trained = build_epoch(records, 0, only(mode, no_mission_prob=0.0), tmp_path / "sft", MISSIONS, source=path)
        ours = [row for row in rows if row["mode"] == mode]
        assert [row["messages"] for row in ours] == [row["messages"] for row in trained]
        assert [row["images"] for row in ours] == [record["images"] for record in records]
    # (a photo without ticket cannot be a verdict row: it falls back to the other modes)
    mix = only("verdict", mode_ratios={"verdict": 1, "summary": 1e-9})
    trained = build_epoch(records, 0, mix, tmp_path / "sft", MISSIONS, source=path, augment=False)
    by_ticket = {row["meta"]["source"]: row["messages"] for row in trained if row["meta"]["mode"] == "verdict"}
    assert {row["source"]: row["messages"] for row in rows if row["mode"] == "verdict"} == by_ticket
    assert all(row["images"] == [] for row in rows if row["mode"] == "verdict")
    for row in rows:
        assert row["label_len"] == len(row["messages"][2]["content"])
        assert row["bucket"] == bucket_of(row["label_len"], THRESHOLDS)
    assert {row["bucket"] for row in rows} == {"short", "medium", "long"}


def test_modes_filter_the_kinds(val):
    records, path = val
    assert [r["mode"] for r in build_candidates(records, MISSIONS, count_chars, THRESHOLDS, ["verdict"], path)] == [
        "verdict",
        "verdict",
    ]
    summary = build_candidates(records, MISSIONS, count_chars, THRESHOLDS, ["summary"], path)
    assert {r["mode"] for r in summary} == {"summary"} and len(summary) == len(records)
    with pytest.raises(VlqcError, match="unknown eval modes"):
        build_candidates(records, MISSIONS, count_chars, THRESHOLDS, ["caption"], path)


def test_unknown_mission_names_the_file(val):
    records, path = val
    with pytest.raises(VlqcError, match="val.jsonl"):
        build_candidates(records, {}, count_chars, THRESHOLDS, ["summary"], path)


def test_draw_split_counts_and_checks_the_buckets(val):
    records, path = val
    rows = build_candidates(records, MISSIONS, count_chars, THRESHOLDS, ["dense", "summary", "verdict"], path)
    split = draw_split(rows, 6, 17, THRESHOLDS, "demo", "candidates.jsonl")
    validate(split, "eval_split")
    assert len(split["rows"]) == 6 and sum(split["bucket_counts"].values()) == 6
    assert split["candidates"] == {b: sum(r["bucket"] == b for r in rows) for b in ("short", "medium", "long")}
    assert split == draw_split(rows, 6, 17, THRESHOLDS, "demo", "candidates.jsonl")
    with pytest.raises(VlqcError, match=r"candidates.jsonl: rows bucketed with other thresholds than \[10, 20\]"):
        draw_split(rows, 6, 17, [10, 20], "demo", "candidates.jsonl")
