"""Rollout dumps of Stage-2 AB, diagnostics that cannot hurt training (docs/stage2.md#rollout-dumps).

Contract:
- The trainer builds one record per dumped channel-B rollout (`rollout_record`) and hands it to
  `RolloutDumpWriter.submit`, which never blocks and never raises: the record goes into a bounded
  queue, or, when the queue is full, it is dropped and counted (`dropped_full`). After `submit` the
  record belongs to the writer; the trainer must not change it.
- A background thread takes records off the queue. It cuts every free-text string (`prompt`,
  `rollout`, each `desc` and dropped `detail`) longer than `max_chars` (0: no limit) to its first
  `max_chars` characters plus `…[cut N chars]` and notes N under the string's dotted path in
  `cut_chars`; adds `rank`; validates the record against schema `stage2_rollout_dump`; and appends
  it as one JSONL line (UTF-8, not ASCII-escaped) to `<dump_dir>/rollouts.rank<r>.jsonl`.
- Unlike vlqc's other artifacts the file is appended to, not written whole and renamed: it is a log of
  a running job. Each line reaches the file in one `write` on an O_APPEND descriptor (no Python
  buffer), and a write that fails part way is cut back off, so the file only ever holds whole lines.
- Free disk at the dump folder under `min_free_mb` (0: not checked): the record is skipped and counted
  (`skipped_disk`); a warning is logged when such a stretch starts, and a note when it ends.
- Anything that goes wrong in the thread (a record that does not validate or serialise, a disk
  error) is counted (`failed`) and logged with its reason when a run of failures starts; the thread
  goes on with the next record. Nothing reaches the trainer but the counts.
- `close(timeout)` lets the thread finish the queue and stops it. `counts()` gives
  written / dropped_full / skipped_disk / failed, and pending (submitted, not yet handled): after a
  clean close every submitted record is in exactly one of the first four.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlqc.jsonl import dumps
from vlqc.schemas import dotted, validate

if TYPE_CHECKING:
    from vlqc.evaluation.grounding import Matching
    from vlqc.inference.answers import DenseAnswer, DenseObject

log = logging.getLogger(__name__)

SCHEMA = "stage2_rollout_dump"
CUT_MARKER = "…[cut {n} chars]"
# Keys whose string values are free text (model output, prompts), the ones max_chars bounds;
# ids, kinds and reason codes are short by contract and must stay whole to be of use.
TEXT_KEYS = frozenset({"prompt", "rollout", "desc", "detail"})
_STOP = object()  # queued by close(): the thread's last item


def dump_path(dump_dir: str | os.PathLike, rank: int) -> Path:
    """The dump file of one training rank."""
    return Path(dump_dir) / f"rollouts.rank{rank}.jsonl"


def rollout_record(
    *,
    step: int,
    sample_id: str,
    prompt: str,
    rollout: str,
    answer: DenseAnswer,
    gt: Sequence[DenseObject],
    matching: Matching | None,
    rollout_tokens: int | None = None,
    truncated: bool | None = None,
) -> dict[str, Any]:
    """The record of one channel-B rollout, as `submit` takes it: `answer` is the salvage parse of the
    rollout (vlqc.inference.answers.parse_dense), `matching` its matching to `gt`
    (vlqc.evaluation.grounding.match), None when the step fell back before matching."""
    record: dict[str, Any] = {
        "step": step,
        "sample_id": sample_id,
        "prompt": prompt,
        "rollout": rollout,
        "parse": {
            "domain": answer.domain,
            "objects": [_object(obj) for obj in answer.objects],
            "dropped": [asdict(dropped) for dropped in answer.dropped],
        },
        "gt_objects": [_object(obj) for obj in gt],
        "matches": None
        if matching is None
        else {
            "pairs": [asdict(pair) for pair in matching.pairs],
            "fp": list(matching.unmatched_pred),
            "fn": list(matching.unmatched_gt),
        },
    }
    if rollout_tokens is not None:
        record["rollout_tokens"] = rollout_tokens
    if truncated is not None:
        record["truncated"] = truncated
    return record


def _object(obj: DenseObject) -> dict[str, Any]:
    return {"kind": obj.kind, "points": list(obj.points), "desc": obj.desc}


def cut_texts(record: Mapping[str, Any], max_chars: int) -> tuple[dict[str, Any], dict[str, int]]:
    """A copy of `record` (tuples become lists) with each free-text string over `max_chars` cut and
    marked, and the characters cut by dotted path. `max_chars` 0 cuts nothing."""
    cuts: dict[str, int] = {}

    def walk(value: Any, path: list[str | int]) -> Any:
        if isinstance(value, Mapping):
            return {key: walk(sub, [*path, key]) for key, sub in value.items()}
        if isinstance(value, list | tuple):
            return [walk(sub, [*path, i]) for i, sub in enumerate(value)]
        if isinstance(value, str) and max_chars and len(value) > max_chars and path and path[-1] in TEXT_KEYS:
            cut = len(value) - max_chars
            cuts[dotted(path)] = cut
            return value[:max_chars] + CUT_MARKER.format(n=cut)
        return value

    return walk(record, []), cuts


def disk_free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


class AppendLines:
    """The default sink: appends whole lines to one file. One `os.write` per line on an O_APPEND
    descriptor; a write that fails or comes up short is cut back to where the line began."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def __call__(self, line: bytes) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        start = os.fstat(self._fd).st_size  # this rank is the file's only writer
        try:
            written = os.write(self._fd, line)
        except OSError:
            self._cut_back(start)
            raise
        if written != len(line):
            self._cut_back(start)
            raise OSError(f"{self.path}: short write ({written} of {len(line)} bytes), the partial line was removed")

    def _cut_back(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            log.warning("%s: could not remove a partly written line (%s); it may end in half a line", self.path, exc)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class RolloutDumpWriter:
    """Best-effort rollout dumps of one training rank, written by a background thread (module docstring).

    `max_chars`, `queue_size` and `min_free_mb` are the keys of `stage2_ab.dump` (their defaults live in
    schemas/train_config.schema.json). `sink` (a callable taking one encoded line, `\\n` included) and
    `free_bytes` (free bytes at a folder) replace the file and `shutil.disk_usage`, for tests."""

    def __init__(
        self,
        dump_dir: str | os.PathLike,
        *,
        rank: int,
        max_chars: int,
        queue_size: int,
        min_free_mb: int,
        sink: Callable[[bytes], None] | None = None,
        free_bytes: Callable[[Path], int] = disk_free_bytes,
    ):
        for name, value, least in (("rank", rank, 0), ("max_chars", max_chars, 0), ("queue_size", queue_size, 1)):
            if value < least:
                raise ValueError(f"rollout dumps: {name} must be at least {least}, not {value}")
        if min_free_mb < 0:
            raise ValueError(f"rollout dumps: min_free_mb must be at least 0, not {min_free_mb}")
        self.folder = Path(dump_dir)
        self.path = dump_path(dump_dir, rank)
        self.rank = rank
        self.max_chars = max_chars
        self.min_free_bytes = int(min_free_mb * 1024 * 1024)
        self._sink = sink if sink is not None else AppendLines(self.path)
        self._free_bytes = free_bytes
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        # Each counter has one writer: the caller's thread (submit) or the writer thread, so no lock
        # is needed and submit never waits on one.
        self._submitted = self._dropped_full = self._late = 0  # caller's thread
        self._written = self._skipped_disk = self._failed = 0  # writer thread
        self._queue_full = False  # caller's thread: inside a run of drops
        self._low_disk = self._failing = False  # writer thread: inside a run of skips / failures
        self._folder_made = False
        self._closed = self._stop_queued = False
        self._thread = threading.Thread(target=self._run, name=f"vlqc-rollout-dump-rank{rank}", daemon=True)
        self._thread.start()

    # --- the caller's side -------------------------------------------------------------------------

    def submit(self, record: Mapping[str, Any]) -> bool:
        """Queue `record` for writing; False when it was dropped instead. Never blocks, never raises."""
        if self._closed:
            self._late += 1
            if self._late == 1:
                log.warning("%s: rollout dumps submitted after close are counted as failed", self.path)
            return False
        self._submitted += 1
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._dropped_full += 1
            if not self._queue_full:
                self._queue_full = True
                log.warning(
                    "%s: the rollout-dump queue is full (%d), the writer cannot keep up; dumps are dropped "
                    "and counted until it drains",
                    self.path,
                    self._queue.maxsize,
                )
            return False
        self._queue_full = False
        return True

    def counts(self) -> dict[str, int]:
        """written / dropped_full / skipped_disk / failed, and pending: queued but not yet handled."""
        # Read the writer thread's counters first and `_submitted` last: each record they count was
        # submitted before, so pending never reads below 0 while both threads run.
        written, skipped, failed = self._written, self._skipped_disk, self._failed
        dropped = self._dropped_full
        submitted = self._submitted
        return {
            "written": written,
            "dropped_full": dropped,
            "skipped_disk": skipped,
            "failed": failed + self._late,
            "pending": submitted - dropped - written - skipped - failed,
        }

    def close(self, timeout: float | None = 60.0) -> bool:
        """Let the thread write what is queued, waiting at most `timeout` seconds (None: no limit), and
        stop it. True when it finished; False (with a warning) when time ran out first. Never raises."""
        self._closed = True
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        if not self._stop_queued:
            try:
                self._queue.put(_STOP, timeout=left())
            except queue.Full:  # the thread is stuck on a slow sink
                return self._gave_up(timeout)
            self._stop_queued = True
        self._thread.join(left())
        return True if not self._thread.is_alive() else self._gave_up(timeout)

    def _gave_up(self, timeout: float | None) -> bool:
        log.warning(
            "%s: the rollout-dump writer did not finish within %s s; %d dumps were not written",
            self.path,
            timeout,
            self.counts()["pending"],
        )
        return False

    def __enter__(self) -> RolloutDumpWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while (record := self._queue.get()) is not _STOP:
                self._handle(record)
        finally:
            close = getattr(self._sink, "close", None)
            if close is not None:
                try:
                    close()
                except OSError as exc:
                    log.warning("%s: closing the rollout-dump file failed: %s", self.path, exc)

    def _handle(self, record: Mapping[str, Any]) -> None:
        # One bad record or disk error must not end the thread (the queue would then fill and every
        # later dump be dropped), so everything is caught here, counted and logged with its reason.
        try:
            line = self._line(record)
            if not self._folder_made:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._folder_made = True
            if self.min_free_bytes and self._disk_low():
                return
            self._sink(line)
        except Exception as exc:
            self._failed += 1
            if not self._failing:
                self._failing = True
                log.warning(
                    "%s: a rollout dump could not be written (%s: %s); dumps are best-effort, training goes on "
                    "(further failures in a row are only counted)",
                    self.path,
                    type(exc).__name__,
                    exc,
                )
            return
        self._written += 1
        self._failing = False

    def _line(self, record: Mapping[str, Any]) -> bytes:
        if not isinstance(record, Mapping):
            raise TypeError(f"a rollout dump must be a mapping, not {type(record).__name__}")
        cut, cuts = cut_texts(record, self.max_chars)
        cut["rank"] = self.rank
        cut["cut_chars"] = cuts
        validate(cut, SCHEMA, f"{self.path}: rollout dump of step {cut.get('step')}")
        return (dumps(cut) + "\n").encode("utf-8")

    def _disk_low(self) -> bool:
        """True (and the record counted as skipped) when the dump folder's disk is under the threshold."""
        free = self._free_bytes(self.folder)
        if free < self.min_free_bytes:
            self._skipped_disk += 1
            if not self._low_disk:
                self._low_disk = True
                log.warning(
                    "%s: %.0f MiB free, under stage2_ab.dump.min_free_mb (%d); rollout dumps are skipped and "
                    "counted until space is freed",
                    self.path,
                    free / 2**20,
                    self.min_free_bytes // 2**20,
                )
            return True
        if self._low_disk:
            self._low_disk = False
            log.info("%s: free disk is back over min_free_mb; rollout dumps resume", self.path)
        return False
