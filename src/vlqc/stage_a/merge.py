"""Merge the per-image rows of the Stage-A ranks into one record per selected group.

Every selected group ends in exactly one of two places: the output, as a record with a summary
for each of its images (`per_image` keys exactly image_1..image_N), or the failure file, with
one reason code and every problem found in `details`. No partial records are written.

Rank files (`<mission>_stage_a.images.rank<r>.jsonl`, `<mission>_stage_a.rank<r>.jsonl`) are
streamed line by line and every row is validated against `stage_a_image_row`; a row that does
not parse or validate stops the merge with an error naming the file and line. With shards
(docs/stage-a.md#shards), shard s's rank files lie in a `shard<s>/` folder and name the rank within the
shard job; failures name the rank among all shards' ranks, s × ranks_per_shard + r, as the dealing does.
Two files of one such rank stop the merge.

The merge also writes the mission's stats (`stage_a_stats`): its counts, and the throughput summed
from the ranks' stats files (`stage_a_rank_stats`, one per rank, written by the inference job).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vlqc.errors import SchemaError, VlqcError
from vlqc.jsonl import atomic_open, dumps, read_json, write_json
from vlqc.schemas import validate

log = logging.getLogger(__name__)

ROW_SCHEMA = "stage_a_image_row"
GROUP_SCHEMA = "stage_a_group"
FAILURE_SCHEMA = "stage_a_failure"
STATS_SCHEMA = "stage_a_stats"
RANK_STATS_SCHEMA = "stage_a_rank_stats"

# When one group has several problems, the failure's reason is the first of these that applies;
# after them comes the error code of the failed row with the lowest image_index.
REASON_PRIORITY = ("empty_group", "out_of_range", "duplicate_image", "inconsistent_row", "missing_image")

_RANK = re.compile(r"(?:^|\.)rank([0-9]+)\.jsonl$")
_SHARD = re.compile(r"shard([0-9]+)")


def rank_of(path: str | os.PathLike) -> int:
    """The rank r of a file named `…rank<r>.jsonl`."""
    match = _RANK.search(Path(path).name)
    if match is None:
        raise VlqcError(f"{path}: not a rank file (expected a name ending in .rank<r>.jsonl)")
    return int(match.group(1))


def dealing_rank_of(path: str | os.PathLike, ranks_per_shard: int | None = None) -> int:
    """The rank among the ranks of all shards (vlqc.stage_a.jobs.dealing_rank) of the rank file `path`: its rank r,
    and for a file in a `shard<s>/` folder, s × ranks_per_shard + r."""
    rank = rank_of(path)
    shard = _SHARD.fullmatch(Path(path).parent.name)
    if shard is None:
        return rank
    if ranks_per_shard is None or rank >= ranks_per_shard:
        raise VlqcError(
            f"{path}: rank {rank} of a shard job, but the shard jobs have {ranks_per_shard} ranks (ranks_per_shard)"
        )
    return int(shard.group(1)) * ranks_per_shard + rank


def _file_label(path: Path) -> str:
    """How failure details name a rank file: its name, after its shard folder if it is in one."""
    return f"{path.parent.name}/{path.name}" if _SHARD.fullmatch(path.parent.name) else path.name


@dataclass
class MergeResult:
    records: list[dict]  # stage_a_group records, in selection order
    failures: list[dict]  # stage_a_failure records, in selection order
    counts: dict[str, Any]  # selected, written, failed, failed_by_reason, rows, stray_rows


@dataclass(frozen=True)
class _Issue:
    reason: str
    image_index: int  # orders failed-image codes; 0 where no single image is concerned
    detail: str
    rank: int | None  # rank of the file holding the offending row; None where no row is at fault


@dataclass
class _Group:
    selected: dict
    summaries: dict[int, str | None] = field(default_factory=dict)  # image_index → summary of its first row
    ranks: set[int] = field(default_factory=set)
    issues: list[_Issue] = field(default_factory=list)

    def add(self, row: dict, rank: int, where: str) -> None:
        """Take one row of this group, noting what is wrong with it."""
        self.ranks.add(rank)
        images = self.selected["images"]
        index = row["image_index"]  # ≥ 1: the row schema says so
        key = f"image_{index}"
        if index > len(images):
            self._issue("out_of_range", f"{key} at {where}, but the group has {len(images)} images", rank)
            return
        name = images[index - 1]
        if index in self.summaries:
            self._issue("duplicate_image", f"{key} ({name}) again at {where}", rank)
        expected = {"group_id": self.selected["group_id"], "label": self.selected["label"], "image_name": name}
        wrong = [f"{k} {row[k]!r}, selection {v!r}" for k, v in expected.items() if row[k] != v]
        if wrong:
            self._issue("inconsistent_row", f"{key} at {where}: {'; '.join(wrong)}", rank)
        if not row["ok"]:
            self._issue(row["error"]["code"], f"{key} ({name}) at {where}: {row['error']['message']}", rank, index)
        self.summaries.setdefault(index, row.get("summary"))

    def _issue(self, reason: str, detail: str, rank: int | None, image_index: int = 0) -> None:
        self.issues.append(_Issue(reason, image_index, detail, rank))

    def missing(self) -> list[int]:
        return [i for i in range(1, len(self.selected["images"]) + 1) if i not in self.summaries]

    def finish(self, mission: str) -> tuple[dict | None, dict | None]:
        """(record, None) for a complete, clean group; (None, failure) otherwise."""
        images = self.selected["images"]
        if not images:
            self._issue("empty_group", "the selection lists no images for this group", None)
        missing = self.missing()
        if missing:
            names = ", ".join(f"image_{i} ({images[i - 1]})" for i in missing)
            self._issue("missing_image", f"no row for {names}", None)
        if not self.issues:
            per_image = {f"image_{i}": self.summaries[i] for i in range(1, len(images) + 1)}
            record = {**self._identity(), "mission": mission, "images": list(images), "per_image": per_image}
            return {**record, "stage_a_complete": True}, None  # incomplete groups go to the failure file
        return None, self._failure()

    def _identity(self) -> dict:
        return {"group_id": self.selected["group_id"], "label": self.selected["label"]}

    def _failure(self) -> dict:
        issues = sorted(self.issues, key=_priority)  # stable: equal keys stay in reading order
        chosen = issues[0]
        # Without an offending row, blame the rank only when one rank wrote all of the group's rows.
        rank = chosen.rank if chosen.rank is not None else (min(self.ranks) if len(self.ranks) == 1 else None)
        details = "; ".join(f"{issue.reason}: {issue.detail}" for issue in issues)
        return {**self._identity(), "reason": chosen.reason, "details": details, "rank": rank}


def _priority(issue: _Issue) -> tuple[int, int]:
    if issue.reason in REASON_PRIORITY:
        return REASON_PRIORITY.index(issue.reason), 0
    return len(REASON_PRIORITY), issue.image_index


def merge(
    selection: list[dict], rank_files: Iterable[str | os.PathLike], mission: str, ranks_per_shard: int | None = None
) -> MergeResult:
    """Merge the rank files' rows into records and failures for every selected group. `ranks_per_shard`: the ranks
    of each shard job, needed for rank files in shard folders (see dealing_rank_of)."""
    groups = _index(selection, mission)
    rows = 0
    stray: dict[int, str] = {}  # unselected group_seq → where its first row is
    stray_rows = 0
    ranked = [(dealing_rank_of(path, ranks_per_shard), path) for path in map(Path, rank_files)]
    # Rank order, so that "the first offending row" does not depend on how the files were listed.
    ranked.sort(key=lambda item: (item[0], str(item[1])))
    for (rank, path), (next_rank, next_path) in zip(ranked, ranked[1:]):
        if rank == next_rank and path != next_path:
            raise VlqcError(f"two rank files of rank {rank}: {path} and {next_path}")
    for rank, path in ranked:
        for lineno, row in _rows(path):
            rows += 1
            group = groups.get(row["group_seq"])
            if group is None:
                stray_rows += 1
                stray.setdefault(row["group_seq"], f"{path}:{lineno}")
                continue
            group.add(row, rank, f"{_file_label(path)}:{lineno}")
    if stray:
        first = ", ".join(f"{seq} ({where})" for seq, where in list(stray.items())[:5])
        log.warning(
            "ignored %d rows of %d group_seq values not in the selection, e.g. %s", stray_rows, len(stray), first
        )
    records, failures = [], []
    for group in groups.values():
        record, failure = group.finish(mission)
        if record is not None:
            records.append(record)
        else:
            failures.append(failure)
    return MergeResult(records, failures, _counts(len(groups), records, failures, rows, stray_rows))


def _index(selection: list[dict], mission: str) -> dict[int, _Group]:
    """Selected groups by group_seq, in selection order."""
    groups: dict[int, _Group] = {}
    for n, selected in enumerate(selection, start=1):
        if selected["mission"] != mission:
            raise VlqcError(f"selection record {n}: mission {selected['mission']!r}, expected {mission!r}")
        if selected["group_seq"] in groups:
            raise VlqcError(f"selection record {n}: group_seq {selected['group_seq']} is selected twice")
        groups[selected["group_seq"]] = _Group(selected)
    return groups


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) for each row of a rank file, validated; blank lines are skipped."""
    # Read here rather than through read_jsonl: the line numbers go into failure details.
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise SchemaError(f"{where}: not UTF-8: {exc.reason}") from exc
            except json.JSONDecodeError as exc:
                raise SchemaError(f"{where}: not valid JSON: {exc.msg}") from exc
            validate(row, ROW_SCHEMA, where)
            yield lineno, row


def _counts(selected: int, records: list[dict], failures: list[dict], rows: int, stray_rows: int) -> dict[str, Any]:
    by_reason: dict[str, int] = {}
    for failure in failures:
        by_reason[failure["reason"]] = by_reason.get(failure["reason"], 0) + 1
    return {
        "selected": selected,
        "written": len(records),
        "failed": len(failures),
        "failed_by_reason": dict(sorted(by_reason.items())),
        "rows": rows,
        "stray_rows": stray_rows,
    }


def check_record(record: dict, where: str) -> None:
    """The check the schema cannot express: per_image keys are exactly image_1..image_N for N images."""
    expected = {f"image_{i}" for i in range(1, len(record["images"]) + 1)}
    if set(record["per_image"]) != expected:
        raise SchemaError(
            f"{where}: per_image: keys {sorted(record['per_image'])} do not match the "
            f"{len(record['images'])} images (expected image_1..image_{len(record['images'])})"
        )


def write_merge(result: MergeResult, out: str | os.PathLike, failures_out: str | os.PathLike) -> None:
    """Write the records and the failures (even none), each file atomically, both only if all validate."""
    with atomic_open(failures_out) as failures_fh, atomic_open(out) as out_fh:
        _write(failures_fh, result.failures, FAILURE_SCHEMA, failures_out)
        for n, record in enumerate(result.records, start=1):
            check_record(record, f"{out}: record {n}")
        _write(out_fh, result.records, GROUP_SCHEMA, out)


def _write(fh: IO, records: list[dict], schema: str, path: str | os.PathLike) -> None:
    for n, record in enumerate(records, start=1):
        validate(record, schema, f"{path}: record {n}")
        fh.write(dumps(record) + "\n")


def merge_stats(result: MergeResult, mission: str, rank_stats: Iterable[str | os.PathLike]) -> dict[str, Any]:
    """The mission's `stage_a_stats`: the merge's counts plus the ranks' work. The ranks run side by side,
    so images/s is what they generated together over the generate seconds of the slowest one. With shards, a
    rank's stats name its rank among all shards' ranks; the stats of one dealing must be given, every rank once."""
    ranks = sorted((read_json(path, schema=RANK_STATS_SCHEMA) for path in rank_stats), key=lambda r: r["rank"])
    seen = [r["rank"] for r in ranks]
    if len(set(seen)) != len(seen):
        raise VlqcError(f"rank stats of {mission}: a rank appears twice among ranks {seen}")
    worlds = sorted({r["world"] for r in ranks})
    if len(worlds) > 1 or (ranks and seen != list(range(worlds[0]))):
        raise VlqcError(
            f"rank stats of {mission}: ranks {seen} of worlds {worlds}, not every rank of one world once "
            "(stats of another shards or ranks setting?)"
        )
    generated = sum(r["generated"] for r in ranks)
    generate_s = max((r["generate_s"] for r in ranks), default=0.0)
    return {
        "mission": mission,
        **result.counts,
        "images": sum(r["images"] for r in ranks),
        "resumed": sum(r["resumed"] for r in ranks),
        "generated": generated,
        "generate_s": generate_s,
        "images_per_s": round(generated / generate_s, 3) if generated and generate_s > 0 else None,
        "ranks": ranks,
    }


def write_stats(stats: dict[str, Any], out: str | os.PathLike) -> None:
    write_json(out, stats, schema=STATS_SCHEMA)
