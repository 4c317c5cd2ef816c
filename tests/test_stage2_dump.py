"""vlqc.train.stage2.dump: rollout dumps that cannot hurt training. A blocked sink does not block
`submit`, a full queue drops and counts, a full disk skips and counts, texts are cut to max_chars,
failures stay in the writer thread, close drains, and the file is JSONL of schema stage2_rollout_dump.

Threads are coordinated with Events; the only timeouts are bounds that keep a broken writer from
hanging the suite, never assertions about speed."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from vlqc.errors import SchemaError
from vlqc.evaluation.grounding import match
from vlqc.inference.answers import DenseObject, parse_dense
from vlqc.inference.prompts import render_dense
from vlqc.jsonl import read_jsonl
from vlqc.schemas import validate
from vlqc.train.stage2 import dump as dump_module
from vlqc.train.stage2.dump import SCHEMA, AppendLines, RolloutDumpWriter, cut_texts, dump_path, rollout_record

WAIT = 30  # seconds: how long a test waits for the writer thread before calling it stuck
LOGGER = "vlqc.train.stage2.dump"
BBU = "类别=BBU设备,品牌=华为"
SCREW = "类别=BBU安装螺丝,可见性=完整,符合性=符合"


def record(step: int = 0, **changes) -> dict:
    base = {
        "step": step,
        "sample_id": f"挡风板安装检查/group_{step}/1.jpg",
        "prompt": "找出图中的所有对象",
        "rollout": '<DOMAIN=BBU>, <TASK=DETECTION>\n{"object_1": {"bbox_2d": [1, 2, 30, 40], "desc": "类别=BBU设备"',
        "parse": {
            "domain": "BBU",
            "objects": [],
            "dropped": [{"where": "answer", "reason": "truncated", "detail": "the answer ends inside object_1"}],
        },
        "gt_objects": [{"kind": "bbox_2d", "points": [1, 2, 30, 40], "desc": BBU}],
        "matches": {"pairs": [], "fp": [], "fn": [0]},
    }
    return {**base, **changes}


class BlockingSink:
    """Holds each write until `release` is set; `entered` tells that a write has begun."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.lines: list[bytes] = []

    def __call__(self, line: bytes) -> None:
        self.entered.set()
        assert self.release.wait(WAIT), "the test never released the sink"
        self.lines.append(line)


def writer(tmp_path, **settings) -> RolloutDumpWriter:
    values = {"rank": 0, "max_chars": 0, "queue_size": 8, "min_free_mb": 0} | settings
    return RolloutDumpWriter(tmp_path / "dumps", **values)


def messages(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and text in r.getMessage()]


# --- the caller never waits ------------------------------------------------------------------------


def test_submit_returns_while_the_sink_is_blocked(tmp_path):
    # The "trainer" runs in a thread of its own, so that a submit that waits for the sink fails the
    # test instead of hanging it.
    sink = BlockingSink()
    dumps = writer(tmp_path, sink=sink)
    returned = threading.Event()
    results = []

    def train_steps():
        results.append(dumps.submit(record(0)))
        if sink.entered.wait(WAIT):  # the writer is inside the sink and stays there until released
            results.extend(dumps.submit(record(step)) for step in range(1, 5))
        returned.set()

    threading.Thread(target=train_steps, daemon=True).start()
    assert returned.wait(WAIT), "submit waited for the sink"
    assert sink.entered.is_set() and not sink.release.is_set() and results == [True] * 5
    assert dumps.counts() == {"written": 0, "dropped_full": 0, "skipped_disk": 0, "failed": 0, "pending": 5}
    sink.release.set()
    assert dumps.close(WAIT)
    assert [json.loads(line)["step"] for line in sink.lines] == [0, 1, 2, 3, 4]
    assert dumps.counts() == {"written": 5, "dropped_full": 0, "skipped_disk": 0, "failed": 0, "pending": 0}


def test_a_full_queue_drops_and_counts(tmp_path, caplog):
    sink = BlockingSink()
    dumps = writer(tmp_path, sink=sink, queue_size=2)
    assert dumps.submit(record(0))
    assert sink.entered.wait(WAIT)  # step 0 is in the sink, the queue is empty
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        accepted = [dumps.submit(record(step)) for step in range(1, 6)]
    assert accepted == [True, True, False, False, False]
    assert len(messages(caplog, "queue is full")) == 1  # once for the stretch of drops, not per drop
    sink.release.set()
    assert dumps.close(WAIT)
    assert [json.loads(line)["step"] for line in sink.lines] == [0, 1, 2]
    assert dumps.counts() == {"written": 3, "dropped_full": 3, "skipped_disk": 0, "failed": 0, "pending": 0}


def test_close_gives_up_after_its_timeout_and_can_be_called_again(tmp_path, caplog):
    sink = BlockingSink()
    dumps = writer(tmp_path, sink=sink, queue_size=1)
    assert dumps.submit(record(0))
    assert sink.entered.wait(WAIT)
    assert dumps.submit(record(1))  # fills the queue, so close cannot queue its stop either
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert dumps.close(timeout=0.05) is False
    assert messages(caplog, "2 dumps were not written")
    assert dumps.counts()["pending"] == 2
    assert dumps.submit(record(2)) is False  # after close: refused and counted, not raised
    sink.release.set()
    assert dumps.close(WAIT)
    assert dumps.counts() == {"written": 2, "dropped_full": 0, "skipped_disk": 0, "failed": 1, "pending": 0}


# --- disk ----------------------------------------------------------------------------------------------


def test_a_full_disk_skips_counts_and_warns_once_per_stretch(tmp_path, caplog):
    free = iter([0, 0, 10 * 2**20, 0])  # MiB free at each record: low, low, enough, low
    dumps = writer(tmp_path, min_free_mb=1, free_bytes=lambda folder: next(free))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for step in range(4):
            assert dumps.submit(record(step))
        assert dumps.close(WAIT)
    assert dumps.counts() == {"written": 1, "dropped_full": 0, "skipped_disk": 3, "failed": 0, "pending": 0}
    assert len(messages(caplog, "under stage2_ab.dump.min_free_mb")) == 2
    assert len(messages(caplog, "rollout dumps resume")) == 1
    assert [row["step"] for row in read_jsonl(dump_path(tmp_path / "dumps", 0), schema=SCHEMA)] == [2]


def test_the_real_free_space_under_the_threshold_skips(tmp_path, caplog):
    # shutil.disk_usage of the dump folder, against a threshold no disk meets (1 EiB).
    dumps = writer(tmp_path, min_free_mb=2**40)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert dumps.submit(record(0)) and dumps.submit(record(1))
        assert dumps.close(WAIT)
    assert dumps.counts()["skipped_disk"] == 2 and dumps.counts()["written"] == 0
    assert len(messages(caplog, "rollout dumps are skipped")) == 1
    assert not dump_path(tmp_path / "dumps", 0).exists()


# --- max_chars -------------------------------------------------------------------------------------


def test_max_chars_cuts_free_text_and_marks_it(tmp_path):
    long_id = "group_" + "9" * 40
    detail = "d" * 25
    dumps = writer(tmp_path, max_chars=10)
    rollout = "挡" * 50
    parse = {"domain": "BBU", "objects": [], "dropped": [{"where": "answer", "reason": "truncated", "detail": detail}]}
    assert dumps.submit(record(0, sample_id=long_id, rollout=rollout, prompt="short", parse=parse))
    assert dumps.close(WAIT)
    (row,) = read_jsonl(dump_path(tmp_path / "dumps", 0), schema=SCHEMA)
    assert row["rollout"] == "挡" * 10 + "…[cut 40 chars]"
    assert row["parse"]["dropped"][0]["detail"] == "d" * 10 + "…[cut 15 chars]"
    assert row["gt_objects"][0]["desc"] == BBU[:10] + "…[cut 4 chars]"
    assert row["cut_chars"] == {"rollout": 40, "parse.dropped[0].detail": 15, "gt_objects[0].desc": 4}
    assert row["prompt"] == "short" and row["sample_id"] == long_id  # ids are never cut
    assert row["gt_objects"][0]["kind"] == "bbox_2d" and row["parse"]["dropped"][0]["reason"] == "truncated"


def test_max_chars_0_keeps_everything():
    text = "x" * 100_000
    kept, cuts = cut_texts(record(0, rollout=text, prompt=text), 0)
    assert kept["rollout"] == text and kept["prompt"] == text and cuts == {}


def test_cutting_does_not_change_the_callers_record():
    original = record(0, rollout="y" * 20)
    kept, cuts = cut_texts(original, 5)
    assert original == record(0, rollout="y" * 20)
    assert kept["rollout"] == "yyyyy…[cut 15 chars]" and cuts["rollout"] == 15


# --- failures stay in the thread -------------------------------------------------------------------


def test_a_failing_sink_is_counted_and_never_raises(tmp_path, caplog):
    outcomes = iter([OSError("No space left on device"), OSError("No space left on device"), None, OSError("EIO")])
    written = []

    def sink(line: bytes) -> None:
        error = next(outcomes)
        if error is not None:
            raise error
        written.append(line)

    dumps = writer(tmp_path, sink=sink)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert all(dumps.submit(record(step)) for step in range(4))
        assert dumps.close(WAIT)
    assert dumps.counts() == {"written": 1, "dropped_full": 0, "skipped_disk": 0, "failed": 3, "pending": 0}
    warned = messages(caplog, "could not be written")
    assert len(warned) == 2  # one per run of failures, each with its reason
    assert "OSError: No space left on device" in warned[0] and "OSError: EIO" in warned[1]
    assert json.loads(written[0])["step"] == 2


def test_bad_records_are_counted_with_the_reason(tmp_path, caplog):
    dumps = writer(tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert dumps.submit(record(-1))  # breaks the schema
        assert dumps.submit(record(1, extra=object()))  # cannot become JSON (and is not in the schema)
        assert dumps.submit(["not", "a", "record"])  # type: ignore[arg-type]
        assert dumps.submit(record(3))
        assert dumps.close(WAIT)
    assert dumps.counts() == {"written": 1, "dropped_full": 0, "skipped_disk": 0, "failed": 3, "pending": 0}
    (warned,) = messages(caplog, "could not be written")
    assert "SchemaError" in warned and "step" in warned and "stage2_rollout_dump" in warned
    assert [row["step"] for row in read_jsonl(dump_path(tmp_path / "dumps", 0), schema=SCHEMA)] == [3]


def test_a_short_write_leaves_only_whole_lines(tmp_path, monkeypatch):
    path = tmp_path / "rollouts.rank0.jsonl"
    sink = AppendLines(path)
    sink(b'{"a": 1}\n')
    real_write = dump_module.os.write

    def half_write(fd: int, data: bytes) -> int:
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(dump_module.os, "write", half_write)
    with pytest.raises(OSError, match="short write"):
        sink(b'{"b": 2, "long": "' + b"z" * 100 + b'"}\n')
    monkeypatch.undo()
    sink(b'{"c": 3}\n')
    sink.close()
    assert path.read_bytes() == b'{"a": 1}\n{"c": 3}\n'


def test_bad_settings_fail_at_once(tmp_path):
    with pytest.raises(ValueError, match="queue_size must be at least 1, not 0"):
        writer(tmp_path, queue_size=0)
    with pytest.raises(ValueError, match="max_chars must be at least 0, not -1"):
        writer(tmp_path, max_chars=-1)


# --- the file ------------------------------------------------------------------------------------------


def test_close_drains_everything_into_valid_jsonl(tmp_path):
    with writer(tmp_path, rank=3, queue_size=64) as dumps:
        for step in range(40):
            assert dumps.submit(record(step))
    assert dumps.counts() == {"written": 40, "dropped_full": 0, "skipped_disk": 0, "failed": 0, "pending": 0}
    path = tmp_path / "dumps" / "rollouts.rank3.jsonl"
    raw = path.read_bytes()
    assert raw.count(b"\n") == 40 and raw.endswith(b"\n")
    assert "找出图中的所有对象".encode() in raw  # UTF-8, not \u-escaped
    rows = list(read_jsonl(path, schema=SCHEMA))
    assert [row["step"] for row in rows] == list(range(40)) and {row["rank"] for row in rows} == {3}


def test_a_second_writer_appends(tmp_path):
    for step in (0, 1):
        with writer(tmp_path) as dumps:
            assert dumps.submit(record(step))
    assert [row["step"] for row in read_jsonl(dump_path(tmp_path / "dumps", 0), schema=SCHEMA)] == [0, 1]


def test_rollout_record_from_a_parse_and_a_matching(tmp_path):
    gt = [DenseObject("bbox_2d", (10, 10, 100, 100), BBU), DenseObject("bbox_2d", (300, 300, 340, 340), SCREW)]
    predicted = [DenseObject("bbox_2d", (12, 10, 100, 98), BBU), DenseObject("bbox_2d", (600, 600, 700, 700), BBU)]
    text = render_dense(predicted, "BBU")
    cut_off = text[:-30]  # a truncated rollout: salvage keeps object_1 and drops the rest
    answer = parse_dense(cut_off, strict=False)
    assert len(answer.objects) == 1 and answer.dropped
    matching = match(answer.objects, gt, iou_threshold=0.5, line_threshold=25)
    built = rollout_record(
        step=7,
        sample_id="s1",
        prompt="p",
        rollout=cut_off,
        answer=answer,
        gt=gt,
        matching=matching,
        rollout_tokens=42,
        truncated=True,
    )
    with writer(tmp_path, rank=1) as dumps:
        assert dumps.submit(built)
    (row,) = read_jsonl(dump_path(tmp_path / "dumps", 1), schema=SCHEMA)
    assert row["parse"]["objects"] == [{"kind": "bbox_2d", "points": [12, 10, 100, 98], "desc": BBU}]
    assert row["parse"]["dropped"][0]["reason"] == answer.dropped[0].reason
    (pair,) = row["matches"]["pairs"]
    assert (pair["pred"], pair["gt"], pair["distance"]) == (0, 0, None) and 0.5 <= pair["iou"] <= 1
    assert row["matches"]["fp"] == [] and row["matches"]["fn"] == [1]
    assert row["rollout_tokens"] == 42 and row["truncated"] is True and row["cut_chars"] == {}


def test_a_fall_back_before_matching_has_null_matches():
    answer = parse_dense("nonsense", strict=False)
    built = rollout_record(step=0, sample_id="s", prompt="p", rollout="nonsense", answer=answer, gt=[], matching=None)
    validate({**built, "rank": 0, "cut_chars": {}}, SCHEMA)
    with pytest.raises(SchemaError, match="cut_chars"):
        validate({**built, "rank": 0}, SCHEMA)
