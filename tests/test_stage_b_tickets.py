"""Stage-B tickets from a Stage-A JSONL: keys, per-image order, and rejects that never stop the file."""

from __future__ import annotations

import json

import pytest

from vlqc.errors import VlqcError
from vlqc.stage_b.tickets import (
    DUPLICATE_TICKET,
    INCOMPLETE_STAGE_A,
    SCHEMA_VIOLATION,
    UNREADABLE_LINE,
    WRONG_MISSION,
    Ticket,
    load_tickets,
)

MISSION = "挡风板安装检查"


def record(group_id="QC-A-20240101-1", label="fail", n=1, mission=MISSION, **overrides):
    doc = {
        "group_id": group_id,
        "mission": mission,
        "label": label,
        "images": [f"{group_id}-{i}.jpg" for i in range(1, n + 1)],
        "per_image": {f"image_{i}": f"BBU设备×{i}" for i in range(1, n + 1)},
    }
    return {**doc, **overrides}


def write_lines(path, lines):
    path.write_bytes(b"".join(line if isinstance(line, bytes) else line.encode() + b"\n" for line in lines))
    return path


def dump(doc):
    return json.dumps(doc, ensure_ascii=False)


def test_a_record_becomes_a_ticket_keyed_by_group_and_label(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", [dump(record(n=2))])
    tickets, rejects = load_tickets(path, MISSION)
    gid = "QC-A-20240101-1"
    assert tickets == [Ticket(f"{gid}::fail", gid, "fail", MISSION, ("BBU设备×1", "BBU设备×2"))]
    assert rejects == []


def test_per_image_follows_the_image_number_not_the_key_text(tmp_path):
    doc = record(n=10)
    # Written in text order: image_1, image_10, image_2, …
    doc["per_image"] = {key: doc["per_image"][key] for key in sorted(doc["per_image"])}
    tickets, _ = load_tickets(write_lines(tmp_path / "a.jsonl", [dump(doc)]), MISSION)
    assert tickets[0].per_image == tuple(f"BBU设备×{i}" for i in range(1, 11))


def test_one_group_under_both_labels_gives_two_tickets(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", [dump(record(label="fail")), dump(record(label="pass"))])
    tickets, rejects = load_tickets(path, MISSION)
    assert [t.ticket_key for t in tickets] == ["QC-A-20240101-1::fail", "QC-A-20240101-1::pass"]
    assert rejects == []


def test_bad_lines_are_rejected_with_a_reason_and_the_rest_still_load(tmp_path):
    lines = [
        dump(record("QC-A-20240101-1")),
        "{not json",
        b"\xff\xfe broken bytes\n",
        dump(record("QC-A-20240101-2", label="maybe")),
        dump(record("QC-A-20240101-3", per_image={"image_2": "BBU设备×1"})),
        dump(record("QC-A-20240101-4", per_image={"image_1": "<DOMAIN=BBU>, <TASK=SUMMARY>\nBBU设备×1\n第二行"})),
        dump(record("QC-A-20240101-5", mission="BBU接地线检查")),
        dump(record("QC-A-20240101-1")),
        "",
        dump(record("QC-A-20240101-6")),
    ]
    tickets, rejects = load_tickets(write_lines(tmp_path / "a.jsonl", lines), MISSION)
    assert [t.group_id for t in tickets] == ["QC-A-20240101-1", "QC-A-20240101-6"]
    assert [(r.line, r.reason, r.ticket_key) for r in rejects] == [
        (2, UNREADABLE_LINE, None),
        (3, UNREADABLE_LINE, None),
        (4, SCHEMA_VIOLATION, None),
        (5, SCHEMA_VIOLATION, None),
        (6, SCHEMA_VIOLATION, "QC-A-20240101-4::fail"),
        (7, WRONG_MISSION, "QC-A-20240101-5::fail"),
        (8, DUPLICATE_TICKET, "QC-A-20240101-1::fail"),
    ]
    assert all(str(tmp_path / "a.jsonl") in r.message for r in rejects)
    assert "label" in rejects[2].message and "image_1..image_1" in rejects[3].message
    assert "'BBU接地线检查'" in rejects[5].message


def test_a_summary_header_line_is_allowed(tmp_path):
    doc = record(per_image={"image_1": "<DOMAIN=BBU>, <TASK=SUMMARY>\nBBU设备×1"})
    tickets, rejects = load_tickets(write_lines(tmp_path / "a.jsonl", [dump(doc)]), MISSION)
    assert rejects == [] and len(tickets) == 1


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(VlqcError, match="nowhere.jsonl does not exist"):
        load_tickets(tmp_path / "nowhere.jsonl", MISSION)


# A record as the origin system writes it: Chinese label values and stage_a_complete.
REFERENCE_SUMMARY = '{"统计": [{"类别": "挡风板", "可见性": {"完整": 1}}]}'


def reference_record(label: str, complete: bool = True, group_id="QC-TEMP-20241111-0015238") -> dict:
    return {
        "group_id": group_id,
        "mission": MISSION,
        "label": label,
        "images": [f"{group_id}_1.jpg", f"{group_id}_2.jpg"],
        "per_image": {"image_1": REFERENCE_SUMMARY, "image_2": "无关图片"},
        "stage_a_complete": complete,
    }


def test_reference_records_load_with_their_label_values_read_as_pass_and_fail(tmp_path):
    lines = [dump(reference_record("审核不通过")), dump(reference_record("审核通过")), dump(record(label="pass"))]
    tickets, rejects = load_tickets(write_lines(tmp_path / "ref.jsonl", lines), MISSION)
    assert rejects == []
    gid = "QC-TEMP-20241111-0015238"
    assert [(t.ticket_key, t.label) for t in tickets] == [
        (f"{gid}::fail", "fail"),
        (f"{gid}::pass", "pass"),
        ("QC-A-20240101-1::pass", "pass"),
    ]
    assert tickets[0].per_image == (REFERENCE_SUMMARY, "无关图片")


def test_a_reference_label_and_its_english_value_are_one_ticket(tmp_path):
    lines = [dump(reference_record("审核不通过")), dump({**reference_record("fail"), "stage_a_complete": True})]
    tickets, rejects = load_tickets(write_lines(tmp_path / "ref.jsonl", lines), MISSION)
    assert len(tickets) == 1 and [(r.line, r.reason) for r in rejects] == [(2, DUPLICATE_TICKET)]


def test_an_incomplete_stage_a_record_is_rejected_as_such(tmp_path):
    incomplete = reference_record("审核通过", complete=False)
    del incomplete["per_image"]["image_2"]  # the photo Stage-A could not summarise
    tickets, rejects = load_tickets(write_lines(tmp_path / "ref.jsonl", [dump(incomplete)]), MISSION)
    assert tickets == []
    [reject] = rejects
    assert (reject.reason, reject.ticket_key) == (INCOMPLETE_STAGE_A, "QC-TEMP-20241111-0015238::pass")
    assert "stage_a_complete is false" in reject.message and "ref.jsonl:1" in reject.message


def test_an_unknown_label_value_is_a_schema_violation(tmp_path):
    tickets, rejects = load_tickets(write_lines(tmp_path / "a.jsonl", [dump(record(label="通过"))]), MISSION)
    assert tickets == [] and rejects[0].reason == SCHEMA_VIOLATION
