"""Stage-B tickets: one mission's Stage-A JSONL read into verdict-ready tickets.

A ticket is one Stage-A record, keyed `"{group_id}::{label}"`: a group id may come back under both
labels (a resubmission), and the pair is what Stage-B judges. Records of the origin system load too:
their labels `审核通过` / `审核不通过` (the label folder names) read as `pass` / `fail`
(`vlqc.tickets.LABEL_DIRS`), and they carry `stage_a_complete` (docs/stage-a.md#output-record).

Each line is checked on its own, so one bad line never stops the file; a line that cannot become a
ticket is returned as a `TicketReject` with a reason code, never dropped:

    unreadable_line    not UTF-8, or not one JSON value
    schema_violation   breaks `stage_a_group`, per_image keys other than image_1..image_N for N
                       images, or a summary that is not one non-empty line once its header is stripped
    incomplete_stage_a `stage_a_complete: false`: Stage-A did not summarise every photo of the group
    wrong_mission      the record belongs to another mission
    duplicate_ticket   a ticket_key already seen on an earlier line (the first one is kept)

Only a missing file is fatal (`VlqcError` naming it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from vlqc.errors import SchemaError, VlqcError
from vlqc.inference.answers import strip_summary_header
from vlqc.schemas import validate
from vlqc.stage_a.merge import GROUP_SCHEMA, check_record
from vlqc.tickets import LABEL_DIRS

UNREADABLE_LINE = "unreadable_line"
SCHEMA_VIOLATION = "schema_violation"
WRONG_MISSION = "wrong_mission"
INCOMPLETE_STAGE_A = "incomplete_stage_a"
DUPLICATE_TICKET = "duplicate_ticket"


@dataclass(frozen=True)
class Ticket:
    ticket_key: str
    group_id: str
    label: str  # the human label, pass | fail (a reference record's 审核通过 | 审核不通过 read as these)
    mission: str
    per_image: tuple[str, ...]  # summaries of image_1..image_N, in that order


@dataclass(frozen=True)
class TicketReject:
    line: int  # 1-based line number in the Stage-A file
    reason: str  # one of the codes in the module docstring
    message: str
    ticket_key: str | None = None  # known once the record passed the schema


class LoadedTickets(NamedTuple):
    tickets: list[Ticket]
    rejects: list[TicketReject]


def ticket_key(group_id: str, label: str) -> str:
    return f"{group_id}::{label}"


def load_tickets(path: str | Path, mission: str) -> LoadedTickets:
    """The tickets of `mission` in file order, and a reject for every line that is not one."""
    path = Path(path)
    if not path.is_file():
        raise VlqcError(f"Stage-A file {path} does not exist")
    tickets: list[Ticket] = []
    rejects: list[TicketReject] = []
    seen: set[str] = set()
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                ticket = _ticket(raw, mission, f"{path}:{lineno}")
            except _Rejected as rejected:
                rejects.append(TicketReject(lineno, rejected.reason, str(rejected), rejected.ticket_key))
                continue
            if ticket.ticket_key in seen:
                message = f"{path}:{lineno}: ticket {ticket.ticket_key} already read on an earlier line"
                rejects.append(TicketReject(lineno, DUPLICATE_TICKET, message, ticket.ticket_key))
                continue
            seen.add(ticket.ticket_key)
            tickets.append(ticket)
    return LoadedTickets(tickets, rejects)


class _Rejected(Exception):
    def __init__(self, reason: str, message: str, key: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.ticket_key = key


def _ticket(raw: bytes, mission: str, where: str) -> Ticket:
    record = _record(raw, where)
    label = LABEL_DIRS.get(record["label"], record["label"])
    key = ticket_key(record["group_id"], label)
    if record.get("stage_a_complete") is False:
        raise _Rejected(
            INCOMPLETE_STAGE_A, f"{where}: stage_a_complete is false: not every photo of the group has a summary", key
        )
    if record["mission"] != mission:
        raise _Rejected(WRONG_MISSION, f"{where}: mission {record['mission']!r}, expected {mission!r}", key)
    summaries = tuple(record["per_image"][f"image_{n}"] for n in range(1, len(record["images"]) + 1))
    for n, summary in enumerate(summaries, start=1):
        text = strip_summary_header(summary)
        if not text or "\n" in text:
            raise _Rejected(SCHEMA_VIOLATION, f"{where}: per_image.image_{n}: not one non-empty line", key)
    return Ticket(key, record["group_id"], label, mission, summaries)


def _record(raw: bytes, where: str) -> dict[str, Any]:
    """The line as a `stage_a_group` record whose per_image keys match its images."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _Rejected(UNREADABLE_LINE, f"{where}: not UTF-8: {exc.reason}") from exc
    except json.JSONDecodeError as exc:
        raise _Rejected(UNREADABLE_LINE, f"{where}: not valid JSON: {exc.msg}") from exc
    try:
        validate(record, GROUP_SCHEMA, where)
        if record.get("stage_a_complete") is not False:  # an incomplete record is rejected as such
            check_record(record, where)
    except SchemaError as exc:
        raise _Rejected(SCHEMA_VIOLATION, str(exc)) from exc
    return record
