"""Stage-A merge: rank rows into one record per selected group, or a failure with one reason code.

Covers the happy path, every failure reason and their priority, rank attribution, coverage,
schema checks on read and write, the schema fast path, and the CLI end to end.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from vlqc.errors import SchemaError, VlqcError
from vlqc.jsonl import read_jsonl, write_jsonl
from vlqc.schemas import fast_check, validate, validator
from vlqc.stage_a.merge import (
    REASON_PRIORITY,
    check_record,
    dealing_rank_of,
    merge,
    merge_stats,
    rank_of,
    write_merge,
)

MISSION = "挡风板安装检查"
SUMMARY = '{"类别":"BBU设备","品牌":"华为","挡风板需求":"无需安装"}'


def _selected(seq: int, images: list[str], label: str = "pass", group_id: str | None = None) -> dict:
    return {
        "group_seq": seq,
        "group_id": group_id or f"QC-TEMP-20241111-{seq:07d}",
        "mission": MISSION,
        "label": label,
        "folder": f"/data/{MISSION}/审核通过/g{seq}",
        "images": images,
    }


def _row(group: dict, index: int, **changes) -> dict:
    """A good row for image `index` of `group`; `changes` override fields (error=… makes it a failed row)."""
    name = group["images"][index - 1] if index <= len(group["images"]) else f"extra_{index}.jpg"
    row = {
        "group_seq": group["group_seq"],
        "group_id": group["group_id"],
        "label": group["label"],
        "image_index": index,
        "image_name": name,
        "ok": True,
        "summary": f"{SUMMARY} {group['group_seq']}/{index}",
    }
    if "error" in changes:
        row.pop("summary")
        row["ok"] = False
    row.update(changes)
    return row


def _rank_file(folder: Path, rank: int, rows: list[dict], stem: str = f"{MISSION}_stage_a.images") -> Path:
    path = folder / f"{stem}.rank{rank}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _only_failure(result) -> dict:
    assert result.records == [] and len(result.failures) == 1
    return result.failures[0]


# --- rank_of ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, rank",
    [
        (f"{MISSION}_stage_a.images.rank3.jsonl", 3),
        (f"{MISSION}_stage_a.rank0.jsonl", 0),
        ("x.rank12.jsonl", 12),
        ("rank7.jsonl", 7),
    ],
)
def test_rank_of_reads_the_rank_from_the_file_name(name, rank):
    assert rank_of(Path("/some/dir") / name) == rank


@pytest.mark.parametrize("name", ["x.jsonl", "x.rank.jsonl", "x_rank3.jsonl", "x.rank3.json", "x.prerank3.jsonl"])
def test_rank_of_rejects_other_names(name):
    with pytest.raises(VlqcError, match="not a rank file"):
        rank_of(name)


# --- shards ----------------------------------------------------------------------------------


def _shard_file(folder: Path, shard: int, rank: int, rows: list[dict]) -> Path:
    (folder / f"shard{shard}").mkdir(exist_ok=True)
    return _rank_file(folder / f"shard{shard}", rank, rows)


@pytest.mark.parametrize(
    "path, ranks_per_shard, rank",
    [("m/shard0/x.rank1.jsonl", 2, 1), ("m/shard3/x.rank1.jsonl", 2, 7), ("m/x.rank5.jsonl", None, 5)],
)
def test_dealing_rank_of_counts_the_ranks_of_earlier_shards(path, ranks_per_shard, rank):
    assert dealing_rank_of(path, ranks_per_shard) == rank


@pytest.mark.parametrize("ranks_per_shard", [None, 2])
def test_dealing_rank_of_a_shard_file_needs_the_ranks_per_shard_above_its_rank(ranks_per_shard):
    with pytest.raises(VlqcError, match=r"shard1/x\.rank2\.jsonl: rank 2 of a shard job"):
        dealing_rank_of("m/shard1/x.rank2.jsonl", ranks_per_shard)


def test_merge_gathers_every_shard_and_blames_the_rank_among_all_shards(tmp_path):
    g0, g1, g2 = _selected(0, ["a.jpg", "b.jpg"]), _selected(1, ["c.jpg"], label="fail"), _selected(2, ["d.jpg"])
    files = [
        _shard_file(tmp_path, 0, 0, [_row(g0, 1)]),
        _shard_file(tmp_path, 0, 1, [_row(g0, 2)]),
        _shard_file(tmp_path, 1, 0, [_row(g1, 1), _row(g2, 1)]),
        _shard_file(tmp_path, 1, 1, [_row(g2, 1)]),  # g2's photo again, in another rank of shard 1
    ]
    result = merge([g0, g1, g2], files[::-1], MISSION, ranks_per_shard=2)
    assert [r["group_id"] for r in result.records] == [g0["group_id"], g1["group_id"]]
    [failure] = result.failures
    assert failure["group_id"] == g2["group_id"] and failure["reason"] == "duplicate_image"
    assert failure["rank"] == 3  # rank 1 of shard 1, two ranks a shard
    assert f"again at shard1/{MISSION}_stage_a.images.rank1.jsonl:1" in failure["details"]
    assert result.counts["selected"] == 3 and result.counts["rows"] == 5


def test_every_selected_group_ends_in_one_output_when_a_shard_wrote_nothing(tmp_path):
    g0, g1 = _selected(0, ["a.jpg"]), _selected(1, ["b.jpg"])
    files = [_shard_file(tmp_path, 0, 0, [_row(g0, 1)]), _shard_file(tmp_path, 1, 0, [])]
    result = merge([g0, g1], files, MISSION, ranks_per_shard=1)
    assert [r["group_id"] for r in result.records] == [g0["group_id"]]
    assert [(f["group_id"], f["reason"]) for f in result.failures] == [(g1["group_id"], "missing_image")]


def test_two_rank_files_of_one_rank_are_refused(tmp_path):
    g = _selected(0, ["a.jpg"])
    one, other = _shard_file(tmp_path, 1, 0, [_row(g, 1)]), _rank_file(tmp_path, 1, [])
    with pytest.raises(VlqcError, match="two rank files of rank 1"):
        merge([g], [one, other], MISSION, ranks_per_shard=1)


def _stats_of(folder: Path, rank: int, world: int) -> Path:
    path = folder / f"stats{rank}_{world}.json"
    doc = {"rank": rank, "world": world, "images": 1, "resumed": 0, "generated": 1, "failed": 0, "generate_s": 1.0}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize("ranks", [[(0, 4), (1, 4), (2, 4)], [(0, 2), (1, 4)], [(1, 2), (2, 2)]])
def test_merge_stats_want_every_rank_of_one_world_once(tmp_path, ranks):
    result = merge([_selected(0, [])], [], MISSION)
    with pytest.raises(VlqcError, match="not every rank of one world once"):
        merge_stats(result, MISSION, [_stats_of(tmp_path, rank, world) for rank, world in ranks])


def test_merge_stats_sum_the_ranks_of_every_shard(tmp_path):
    result = merge([_selected(0, [])], [], MISSION)
    stats = merge_stats(result, MISSION, [_stats_of(tmp_path, rank, 4) for rank in (3, 1, 0, 2)])
    assert [r["rank"] for r in stats["ranks"]] == [0, 1, 2, 3] and stats["generated"] == 4


# --- happy path ------------------------------------------------------------------------------


def test_happy_path_two_ranks_interleaved_rows(tmp_path):
    g0 = _selected(0, ["b_10.jpg", "a_2.jpg", "c.jpg"])  # selection (discovery) order, not alphabetical
    g1 = _selected(1, ["x.png"], label="fail")
    g2 = _selected(2, ["p.jpg", "q.jpg"])
    rank1 = _rank_file(tmp_path, 1, [_row(g0, 3), _row(g2, 2), _row(g0, 1)])
    rank0 = _rank_file(tmp_path, 0, [_row(g1, 1), _row(g2, 1), _row(g0, 2)])
    result = merge([g0, g1, g2], [rank1, rank0], MISSION)
    assert result.failures == []
    assert [r["group_id"] for r in result.records] == [g0["group_id"], g1["group_id"], g2["group_id"]]
    first = result.records[0]
    assert first == {
        "group_id": g0["group_id"],
        "mission": MISSION,
        "label": "pass",
        "images": ["b_10.jpg", "a_2.jpg", "c.jpg"],
        "per_image": {"image_1": f"{SUMMARY} 0/1", "image_2": f"{SUMMARY} 0/2", "image_3": f"{SUMMARY} 0/3"},
        "stage_a_complete": True,
    }
    assert list(first["per_image"]) == ["image_1", "image_2", "image_3"]
    assert result.records[1]["label"] == "fail"
    assert result.counts == {
        "selected": 3,
        "written": 3,
        "failed": 0,
        "failed_by_reason": {},
        "rows": 6,
        "stray_rows": 0,
    }


def test_records_and_failures_follow_the_selection_order(tmp_path):
    groups = [_selected(seq, ["a.jpg"]) for seq in (5, 1, 9, 3)]
    rows = [_row(g, 1) for g in groups if g["group_seq"] != 9]
    result = merge(groups, [_rank_file(tmp_path, 0, rows[::-1])], MISSION)
    assert [r["group_id"] for r in result.records] == [groups[i]["group_id"] for i in (0, 1, 3)]
    assert [f["group_id"] for f in result.failures] == [groups[2]["group_id"]]


# --- one failure reason each ---------------------------------------------------------------


def test_duplicate_image_fails_the_group_with_the_duplicates_rank(tmp_path):
    g = _selected(0, ["a.jpg", "b.jpg"])
    rank0 = _rank_file(tmp_path, 0, [_row(g, 1), _row(g, 2)])
    rank2 = _rank_file(tmp_path, 2, [_row(g, 2)])
    failure = _only_failure(merge([g], [rank0, rank2], MISSION))
    assert failure["reason"] == "duplicate_image"
    assert failure["rank"] == 2
    assert "image_2 (b.jpg) again at" in failure["details"] and ".rank2.jsonl:1" in failure["details"]


def test_missing_image_names_the_images_and_the_rank_that_owned_the_group(tmp_path):
    g = _selected(0, ["a.jpg", "b.jpg", "c.jpg"])
    failure = _only_failure(merge([g], [_rank_file(tmp_path, 3, [_row(g, 2)])], MISSION))
    assert failure == {
        "group_id": g["group_id"],
        "label": "pass",
        "reason": "missing_image",
        "details": "missing_image: no row for image_1 (a.jpg), image_3 (c.jpg)",
        "rank": 3,
    }


def test_missing_image_rank_is_null_when_rows_came_from_several_ranks_or_none(tmp_path):
    g = _selected(0, ["a.jpg", "b.jpg", "c.jpg"])
    spread = merge([g], [_rank_file(tmp_path, 0, [_row(g, 1)]), _rank_file(tmp_path, 1, [_row(g, 2)])], MISSION)
    assert _only_failure(spread)["rank"] is None
    none = merge([g], [_rank_file(tmp_path, 5, [])], MISSION)
    assert _only_failure(none)["reason"] == "missing_image" and _only_failure(none)["rank"] is None


def test_out_of_range_image_index_fails_the_group(tmp_path):
    g = _selected(0, ["a.jpg", "b.jpg"])
    rows = [_row(g, 1), _row(g, 2), _row(g, 3)]
    failure = _only_failure(merge([g], [_rank_file(tmp_path, 1, rows)], MISSION))
    assert failure["reason"] == "out_of_range" and failure["rank"] == 1
    assert "image_3 at" in failure["details"] and "the group has 2 images" in failure["details"]


def test_image_index_below_one_is_a_schema_violation(tmp_path):
    g = _selected(0, ["a.jpg"])
    path = _rank_file(tmp_path, 0, [_row(g, 1, image_index=0)])
    with pytest.raises(SchemaError, match=r"rank0\.jsonl:1: image_index: 0 is less than the minimum of 1"):
        merge([g], [path], MISSION)


def test_rows_of_unselected_groups_are_counted_and_logged_as_stray(tmp_path, caplog):
    g = _selected(0, ["a.jpg"])
    other = _selected(7, ["z.jpg"])
    path = _rank_file(tmp_path, 0, [_row(other, 1), _row(g, 1), _row(other, 2)])
    with caplog.at_level(logging.WARNING, logger="vlqc.stage_a.merge"):
        result = merge([g], [path], MISSION)
    assert [r["group_id"] for r in result.records] == [g["group_id"]] and result.failures == []
    assert result.counts["stray_rows"] == 2 and result.counts["rows"] == 3
    assert "ignored 2 rows of 1 group_seq values not in the selection" in caplog.text
    assert f"7 ({path}:1)" in caplog.text


def test_failed_image_uses_the_rows_error_code(tmp_path):
    g = _selected(0, ["a.jpg", "broken.jpg"])
    bad = _row(g, 2, error={"code": "decode_error", "message": "cannot identify image file"})
    failure = _only_failure(merge([g], [_rank_file(tmp_path, 4, [_row(g, 1), bad])], MISSION))
    assert failure["reason"] == "decode_error" and failure["rank"] == 4
    assert "image_2 (broken.jpg)" in failure["details"] and "cannot identify image file" in failure["details"]


@pytest.mark.parametrize(
    "field, value", [("group_id", "QC-OTHER-20240101-0000001"), ("label", "fail"), ("image_name", "renamed.jpg")]
)
def test_inconsistent_row_fails_the_group(tmp_path, field, value):
    g = _selected(0, ["a.jpg", "b.jpg"])
    failure = _only_failure(merge([g], [_rank_file(tmp_path, 0, [_row(g, 1), _row(g, 2, **{field: value})])], MISSION))
    assert failure["reason"] == "inconsistent_row" and failure["rank"] == 0
    assert f"{field} {value!r}" in failure["details"]


def test_empty_group_fails_even_without_rows(tmp_path):
    g = _selected(0, [])
    failure = _only_failure(merge([g], [_rank_file(tmp_path, 0, [])], MISSION))
    assert failure == {
        "group_id": g["group_id"],
        "label": "pass",
        "reason": "empty_group",
        "details": "empty_group: the selection lists no images for this group",
        "rank": None,
    }


# --- several problems in one group ---------------------------------------------------------


def test_priority_order_is_documented():
    assert REASON_PRIORITY == ("empty_group", "out_of_range", "duplicate_image", "inconsistent_row", "missing_image")


def test_several_problems_pick_by_priority_and_details_mention_all(tmp_path):
    g = _selected(0, ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"])
    rows = [
        _row(g, 5, error={"code": "oom", "message": "CUDA out of memory"}),
        _row(g, 2, label="fail"),  # inconsistent
        _row(g, 1),
        _row(g, 1),  # duplicate, in rank 0
        _row(g, 4, error={"code": "decode_error", "message": "truncated"}),
    ]
    rank0 = _rank_file(tmp_path, 0, rows[:4])
    rank1 = _rank_file(tmp_path, 1, rows[4:] + [_row(g, 1)])  # a second duplicate, in rank 1
    failure = _only_failure(merge([g], [rank1, rank0], MISSION))
    assert failure["reason"] == "duplicate_image"
    assert failure["rank"] == 0  # the first duplicate row read (files are read in rank order)
    details = failure["details"]
    for piece in (
        "duplicate_image: image_1",
        "inconsistent_row: image_2",
        "missing_image: no row for image_3 (c.jpg)",
        "decode_error: image_4 (d.jpg)",
        "oom: image_5 (e.jpg)",
    ):
        assert piece in details
    # details list the problems in priority order, failed images by image_index
    positions = [
        details.index(p) for p in ("duplicate_image", "inconsistent_row", "missing_image", "decode_error", "oom")
    ]
    assert positions == sorted(positions)


PROBLEMS = ("empty_group", "out_of_range", "duplicate_image", "inconsistent_row", "missing_image")


@pytest.mark.parametrize("first", range(len(PROBLEMS) + 1))
def test_each_reason_beats_the_ones_after_it(tmp_path, first):
    """PROBLEMS[first:] are present, plus two failed images (an empty group can only have out-of-range rows)."""
    present = PROBLEMS[first:]
    g = _selected(0, [] if "empty_group" in present else ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"])
    rows = [_row(g, 9)] if "out_of_range" in present else []
    if g["images"]:
        # image_3's failure is read first, but image_2's is the first image's
        rows += [
            _row(g, 3, error={"code": "aa_error", "message": "x"}),
            _row(g, 1),
            _row(g, 2, error={"code": "zz_error", "message": "y"}),
        ]
        rows += [_row(g, 1)] if "duplicate_image" in present else []
        rows += [_row(g, 4, image_name="other.jpg" if "inconsistent_row" in present else "d.jpg")]
        rows += [] if "missing_image" in present else [_row(g, 5)]
    failure = _only_failure(merge([g], [_rank_file(tmp_path, 0, rows)], MISSION))
    assert failure["reason"] == (present[0] if present else "zz_error")


def test_failed_images_pick_the_lowest_image_index(tmp_path):
    g = _selected(0, ["a.jpg", "b.jpg", "c.jpg"])
    rows = [
        _row(g, 3, error={"code": "aa_error", "message": "x"}),
        _row(g, 1),
        _row(g, 2, error={"code": "zz_error", "message": "y"}),
    ]
    failure = _only_failure(merge([g], [_rank_file(tmp_path, 6, rows)], MISSION))
    assert failure["reason"] == "zz_error" and failure["rank"] == 6


# --- coverage, inputs ------------------------------------------------------------------------


def test_every_selected_group_ends_in_exactly_one_output(tmp_path):
    groups = [
        _selected(seq, [f"{seq}_{i}.jpg" for i in range(seq % 4)], label="pass" if seq % 2 else "fail")
        for seq in range(40)
    ]
    rows = []
    for g in groups:
        for index in range(1, len(g["images"]) + 1):
            if (g["group_seq"] + index) % 7 == 0:
                continue  # missing
            if (g["group_seq"] + index) % 11 == 0:
                rows.append(_row(g, index, error={"code": "decode_error", "message": "x"}))
            else:
                rows.append(_row(g, index))
        if g["group_seq"] % 13 == 0:
            rows.append(_row(g, 1))  # duplicate or out of range
    files = [_rank_file(tmp_path, r, rows[r::3]) for r in range(3)]
    result = merge(groups, files, MISSION)
    written = [(r["group_id"], r["label"]) for r in result.records]
    failed = [(f["group_id"], f["label"]) for f in result.failures]
    assert sorted(written + failed) == sorted((g["group_id"], g["label"]) for g in groups)
    assert not set(written) & set(failed)
    assert result.counts["selected"] == 40 == result.counts["written"] + result.counts["failed"]
    assert sum(result.counts["failed_by_reason"].values()) == result.counts["failed"]
    assert result.counts["written"] > 0 and set(result.counts["failed_by_reason"]) == {
        "empty_group",
        "missing_image",
        "decode_error",
        "duplicate_image",
    }


def test_selection_with_another_mission_or_a_repeated_group_seq_is_rejected(tmp_path):
    path = _rank_file(tmp_path, 0, [])
    with pytest.raises(VlqcError, match="selection record 1: mission 'BBU接地线检查'"):
        merge([{**_selected(0, ["a.jpg"]), "mission": "BBU接地线检查"}], [path], MISSION)
    with pytest.raises(VlqcError, match="selection record 2: group_seq 4 is selected twice"):
        merge([_selected(4, ["a.jpg"]), _selected(4, ["b.jpg"])], [path], MISSION)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"group_seq": 0}', r"rank1\.jsonl:2: <top level>: 'group_id' is a required property"),
        ("not json", r"rank1\.jsonl:2: not valid JSON"),
    ],
)
def test_bad_rows_name_the_file_and_line(tmp_path, line, message):
    g = _selected(0, ["a.jpg"])
    path = _rank_file(tmp_path, 1, [_row(g, 1)])
    path.write_text(path.read_text(encoding="utf-8") + line + "\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=message):
        merge([g], [path], MISSION)


def test_row_schema_ties_summary_to_ok(tmp_path):
    g = _selected(0, ["a.jpg"])
    no_summary = {k: v for k, v in _row(g, 1).items() if k != "summary"}
    failed_with_summary = {**_row(g, 1, error={"code": "decode_error", "message": "x"}), "summary": SUMMARY}
    ok_with_error = {**_row(g, 1), "error": {"code": "decode_error", "message": "x"}}
    for row, problem in [
        (no_summary, "'summary' is a required property"),
        (failed_with_summary, r"summary: .* should not be valid under \{\}"),
        (ok_with_error, r"error: .* should not be valid under \{\}"),
    ]:
        with pytest.raises(SchemaError, match=problem):
            validate(row, "stage_a_image_row")
    with pytest.raises(SchemaError, match=r"rank0\.jsonl:1: .*summary"):
        merge([g], [_rank_file(tmp_path, 0, [no_summary])], MISSION)


def test_non_utf8_rank_file_is_named(tmp_path):
    g = _selected(0, ["a.jpg"])
    path = tmp_path / "x.rank0.jsonl"
    path.write_bytes(b'{"group_id": "\xff"}\n')
    with pytest.raises(SchemaError, match=r"x\.rank0\.jsonl:1: not UTF-8"):
        merge([g], [path], MISSION)


# --- writing ---------------------------------------------------------------------------------


def test_written_files_validate_and_an_empty_failure_file_is_written(tmp_path):
    g0, g1 = _selected(0, ["a.jpg"]), _selected(1, ["b.jpg"])
    rows = _rank_file(tmp_path, 0, [_row(g0, 1), _row(g1, 1)])
    out, failures = (
        tmp_path / "out" / f"{MISSION}_stage_a.jsonl",
        tmp_path / "out" / f"{MISSION}_stage_a.failures.jsonl",
    )
    write_merge(merge([g0, g1], [rows], MISSION), out, failures)
    records = list(read_jsonl(out, schema="stage_a_group"))
    assert [r["per_image"] for r in records] == [{"image_1": f"{SUMMARY} 0/1"}, {"image_1": f"{SUMMARY} 1/1"}]
    assert failures.read_text(encoding="utf-8") == ""
    assert "挡风板" in out.read_text(encoding="utf-8")  # ensure_ascii=False
    write_merge(merge([g0, g1], [rows, _rank_file(tmp_path, 1, [_row(g1, 1)])], MISSION), out, failures)
    assert [f["reason"] for f in read_jsonl(failures, schema="stage_a_failure")] == ["duplicate_image"]
    assert len(list(read_jsonl(out, schema="stage_a_group"))) == 1


def test_check_record_requires_exactly_image_1_to_n():
    record = {
        "group_id": "g",
        "mission": MISSION,
        "label": "pass",
        "images": ["a.jpg", "b.jpg"],
        "per_image": {"image_1": "x", "image_2": "y"},
    }
    check_record(record, "here")
    for keys in (["image_1"], ["image_1", "image_3"], ["image_1", "image_2", "image_3"]):
        with pytest.raises(SchemaError, match=r"^here: per_image: keys"):
            check_record({**record, "per_image": dict.fromkeys(keys, "x")}, "here")


def test_write_merge_leaves_no_file_when_a_record_is_invalid(tmp_path):
    g = _selected(0, ["a.jpg", "b.jpg"])
    result = merge([g], [_rank_file(tmp_path, 0, [_row(g, 1), _row(g, 2)])], MISSION)
    del result.records[0]["per_image"]["image_2"]
    out = tmp_path / "out"
    with pytest.raises(SchemaError, match=r"record 1: per_image: keys"):
        write_merge(result, out / "s.jsonl", out / "f.jsonl")
    assert list(out.iterdir()) == []


# --- schemas ---------------------------------------------------------------------------------


def _verify_ok() -> dict:
    return {
        "group_seq": 0,
        "group_id": "g",
        "image_index": 1,
        "image_name": "a.jpg",
        "ok": True,
        "width": 640,
        "height": 480,
        "sha256": "0" * 64,
        "grid_thw": [1, 30, 40],
        "expected_tokens": 300,
        "actual_tokens": 300,
        "match": True,
    }


def test_verify_schema_ok_and_failed_rows():
    validate(_verify_ok(), "stage_a_verify")
    validate(
        {
            "group_seq": 0,
            "group_id": "g",
            "image_index": 1,
            "image_name": "a.jpg",
            "ok": False,
            "error": {"code": "decode_error", "message": "x"},
        },
        "stage_a_verify",
    )
    with pytest.raises(SchemaError, match="'error' is a required property"):
        validate(
            {"group_seq": 0, "group_id": "g", "image_index": 1, "image_name": "a.jpg", "ok": False}, "stage_a_verify"
        )
    with pytest.raises(SchemaError, match="sha256"):
        validate({**_verify_ok(), "sha256": "ABC"}, "stage_a_verify")
    with pytest.raises(SchemaError, match=r"actual_tokens: 300 should not be valid under \{\}"):
        validate({**_verify_ok(), "ok": False, "error": {"code": "x", "message": ""}}, "stage_a_verify")


def test_group_schema_per_image_keys():
    record = {"group_id": "g", "mission": MISSION, "label": "pass", "images": ["a.jpg"], "per_image": {"image_1": "x"}}
    validate(record, "stage_a_group")
    for per_image in ({}, {"image_0": "x"}, {"image_01": "x"}, {"img_1": "x"}, {"image_1": ""}):
        with pytest.raises(SchemaError):
            validate({**record, "per_image": per_image}, "stage_a_group")
    with pytest.raises(SchemaError, match="images"):
        validate({**record, "images": []}, "stage_a_group")


def _mutations(doc: dict) -> list:
    """Documents around `doc`: each key dropped, given wrong or edge-case values, an extra key."""
    values = [
        None,
        True,
        False,
        0,
        1,
        -1,
        1.0,
        2.5,
        "",
        "x",
        "image_1",
        "decode_error",
        "Bad Code",
        "pass",
        [],
        ["a.jpg"],
        [1, 2, 3],
        {},
        {"code": "x", "message": "m"},
        {"image_1": "s"},
        "0" * 64,
    ]
    out = [doc, [doc], "doc", None, {**doc, "unknown": 1}]
    for key in doc:
        out.append({k: v for k, v in doc.items() if k != key})
        out += [{**doc, key: value} for value in values]
    return out


@pytest.mark.parametrize(
    "name, doc",
    [
        ("stage_a_image_row", _row(_selected(0, ["a.jpg"]), 1)),
        ("stage_a_image_row", _row(_selected(0, ["a.jpg"]), 1, error={"code": "decode_error", "message": "x"})),
        (
            "stage_a_group",
            {
                "group_id": "g",
                "mission": MISSION,
                "label": "pass",
                "images": ["a.jpg"],
                "per_image": {"image_1": "x", "image_2": "y"},
            },
        ),
        ("stage_a_group_selection", _selected(0, ["a.jpg"])),
        ("stage_a_failure", {"group_id": "g", "label": "fail", "reason": "missing_image", "details": "", "rank": 0}),
        ("stage_a_verify", _verify_ok()),
        (
            "stage_a_verify",
            {
                "group_seq": 0,
                "group_id": "g",
                "image_index": 1,
                "image_name": "a.jpg",
                "ok": False,
                "error": {"code": "decode_error", "message": "x"},
            },
        ),
    ],
)
def test_schema_fast_path_agrees_with_jsonschema(name, doc):
    fast = fast_check(name)
    assert fast is not None, "the Stage-A schemas must stay within the fast path's keywords"
    docs = _mutations(doc)
    for key, value in doc.items():
        if isinstance(value, dict):  # one level down too: error, per_image
            docs += [{**doc, key: inner} for inner in _mutations(value)]
    for each in docs:
        assert fast(copy.deepcopy(each)) == validator(name).is_valid(each), each


# --- CLI -------------------------------------------------------------------------------------


def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "stage_a_merge.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )


def test_cli_end_to_end_with_a_chinese_mission_name(tmp_path):
    groups = [_selected(0, ["a.jpg", "b.jpg"]), _selected(1, ["c.jpg"], label="fail"), _selected(2, [])]
    selection = tmp_path / MISSION / "selection.jsonl"
    selection.parent.mkdir()
    write_jsonl(selection, groups, schema="stage_a_group_selection")
    rank0 = _rank_file(selection.parent, 0, [_row(groups[0], 2), _row(groups[1], 1)])
    rank1 = _rank_file(selection.parent, 1, [_row(groups[0], 1), _row(groups[1], 1)])
    out, failures = tmp_path / f"{MISSION}_stage_a.jsonl", tmp_path / f"{MISSION}_stage_a.failures.jsonl"
    done = _cli("--selection", selection, "--out", out, "--failures", failures, "--mission", MISSION, rank0, rank1)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    assert counts["selected"] == 3 and counts["written"] == 1
    assert counts["failed_by_reason"] == {"duplicate_image": 1, "empty_group": 1}
    assert f"{MISSION}: selected 3, written 1, failed 2 (duplicate_image 1, empty_group 1)" in done.stderr
    [record] = read_jsonl(out, schema="stage_a_group")
    assert record["mission"] == MISSION and record["images"] == ["a.jpg", "b.jpg"]
    assert [(f["reason"], f["rank"]) for f in read_jsonl(failures, schema="stage_a_failure")] == [
        ("duplicate_image", 1),
        ("empty_group", None),
    ]


def test_cli_fails_on_invalid_or_missing_inputs_naming_the_file(tmp_path):
    selection = tmp_path / "selection.jsonl"
    selection.write_text(json.dumps({**_selected(0, ["a.jpg"]), "label": "maybe"}) + "\n", encoding="utf-8")
    rank0 = _rank_file(tmp_path, 0, [])
    out, failures = tmp_path / "out.jsonl", tmp_path / "failures.jsonl"
    bad = _cli("--selection", selection, "--out", out, "--failures", failures, "--mission", MISSION, rank0)
    assert bad.returncode == 1 and "selection.jsonl:1: label:" in bad.stderr
    write_jsonl(selection, [_selected(0, ["a.jpg"])], schema="stage_a_group_selection")
    missing = tmp_path / f"{MISSION}_stage_a.rank1.jsonl"
    gone = _cli("--selection", selection, "--out", out, "--failures", failures, "--mission", MISSION, rank0, missing)
    assert gone.returncode == 1 and str(missing) in gone.stderr
    assert not out.exists() and not failures.exists()


def _rank_stats(folder: Path, rank: int, generated: int, generate_s: float, world: int = 2) -> Path:
    path = folder / f"rank{rank}.stats.json"
    stats = {"rank": rank, "world": world, "images": generated + 1, "resumed": 1, "generated": generated}
    path.write_text(json.dumps({**stats, "failed": 0, "generate_s": generate_s}), encoding="utf-8")
    return path


def test_cli_stats_sum_the_ranks_and_time_the_slowest(tmp_path):
    groups = [_selected(0, ["a.jpg"]), _selected(1, ["b.jpg"], label="fail")]
    selection = tmp_path / "selection.jsonl"
    write_jsonl(selection, groups, schema="stage_a_group_selection")
    ranks = [
        _rank_file(tmp_path, 0, [_row(groups[0], 1)]),
        _rank_file(tmp_path, 1, [_row(groups[1], 1, error={"code": "decode_error", "message": "x"})]),
    ]
    stats = [
        _rank_stats(tmp_path, 1, generated=6, generate_s=4.0),
        _rank_stats(tmp_path, 0, generated=4, generate_s=2.0),
    ]
    out, failures, stats_out = tmp_path / "out.jsonl", tmp_path / "failures.jsonl", tmp_path / "stats.json"
    args = ["--selection", selection, "--out", out, "--failures", failures, "--mission", MISSION]
    done = _cli(*args, "--stats", stats_out, *ranks, "--rank-stats", *stats)  # as the rule orders them
    assert done.returncode == 0, done.stderr
    doc = json.loads(stats_out.read_text(encoding="utf-8"))
    validate(doc, "stage_a_stats")
    assert (doc["mission"], doc["selected"], doc["written"], doc["failed"]) == (MISSION, 2, 1, 1)
    assert doc["failed_by_reason"] == {"decode_error": 1}
    # 10 images in the 4 s of the slower rank (the ranks run side by side).
    assert (doc["generated"], doc["generate_s"], doc["images_per_s"]) == (10, 4.0, 2.5)
    assert [r["rank"] for r in doc["ranks"]] == [0, 1] and doc["images"] == 12 and doc["resumed"] == 2


def test_cli_stats_without_generation_has_no_rate_and_needs_both_flags(tmp_path):
    groups = [_selected(0, ["a.jpg"])]
    selection = tmp_path / "selection.jsonl"
    write_jsonl(selection, groups, schema="stage_a_group_selection")
    rank = _rank_file(tmp_path, 0, [_row(groups[0], 1)])
    stats = _rank_stats(tmp_path, 0, generated=0, generate_s=0.0, world=1)
    args = ["--selection", selection, "--out", tmp_path / "o.jsonl", "--failures", tmp_path / "f.jsonl"]
    done = _cli(*args, "--mission", MISSION, "--stats", tmp_path / "s.json", "--rank-stats", stats, "--", rank)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))["images_per_s"] is None
    alone = _cli(*args, "--mission", MISSION, "--stats", tmp_path / "t.json", rank)
    assert alone.returncode == 1 and "--stats and --rank-stats go together" in alone.stderr


def test_rank_stats_that_break_the_schema_are_named(tmp_path):
    bad = tmp_path / "rank0.stats.json"
    bad.write_text(json.dumps({"rank": 0, "world": 1, "images": 1}), encoding="utf-8")
    result = merge([_selected(0, [])], [], MISSION)
    with pytest.raises(SchemaError, match="rank0.stats.json"):
        merge_stats(result, MISSION, [bad])


def test_cli_merges_shard_folders_with_the_ranks_per_shard(tmp_path):
    groups = [_selected(0, ["a.jpg", "b.jpg"]), _selected(1, ["c.jpg"], label="fail")]
    selection = tmp_path / MISSION / "selection.jsonl"
    selection.parent.mkdir()
    write_jsonl(selection, groups, schema="stage_a_group_selection")
    files = [
        _shard_file(selection.parent, 0, 0, [_row(groups[0], 1)]),
        _shard_file(selection.parent, 1, 0, [_row(groups[0], 2), _row(groups[1], 1)]),
    ]
    stats = []
    for shard in range(2):
        stats.append(selection.parent / f"shard{shard}" / "rank0.stats.json")
        doc = {"rank": shard, "world": 2, "images": 1, "resumed": 0, "generated": 1, "failed": 0, "generate_s": 2.0}
        stats[-1].write_text(json.dumps(doc), encoding="utf-8")
    out, failures, stats_out = tmp_path / "out.jsonl", tmp_path / "failures.jsonl", tmp_path / "stats.json"
    args = ["--selection", selection, "--out", out, "--failures", failures, "--mission", MISSION]
    done = _cli(*args, "--stats", stats_out, "--ranks-per-shard", "1", *files, "--rank-stats", *stats)
    assert done.returncode == 0, done.stderr
    assert [r["group_id"] for r in read_jsonl(out, schema="stage_a_group")] == [g["group_id"] for g in groups]
    assert [r["rank"] for r in json.loads(stats_out.read_text(encoding="utf-8"))["ranks"]] == [0, 1]
    without = _cli(*args, *files)
    assert without.returncode == 1 and "rank 0 of a shard job" in without.stderr
