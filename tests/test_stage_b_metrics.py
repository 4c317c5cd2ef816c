"""Stage-B metrics: false pass counted right, undefined rates, review blocks and metrics.jsonl rows."""

from __future__ import annotations

import pytest

from vlqc.errors import VlqcError
from vlqc.schemas import validate
from vlqc.stage_b.metrics import Judgement, MetricsWindow, confusion, metric_blocks

SCHEMA = "stage_b_metrics"


def test_false_pass_is_fp_over_the_fail_labelled_tickets():
    pairs = [("fail", "pass"), ("fail", "fail"), ("fail", "fail"), ("fail", "fail"), ("pass", "fail"), ("pass", "pass")]
    assert confusion(pairs) == {"acc": 4 / 6, "fn": 1, "fp": 1, "fn_rate": 0.5, "fp_rate": 0.25, "n": 6}


def test_rates_without_tickets_are_undefined_not_zero():
    assert confusion([]) == {"acc": None, "fn": 0, "fp": 0, "fn_rate": None, "fp_rate": None, "n": 0}
    only_pass = confusion([("pass", "pass")])
    assert (only_pass["fp_rate"], only_pass["fn_rate"], only_pass["acc"]) == (None, 0.0, 1.0)


def test_unknown_labels_or_verdicts_are_refused():
    with pytest.raises(VlqcError, match="pass or fail"):
        confusion([("fail", None)])


def test_include_counts_every_ticket_and_exclude_leaves_out_the_flagged_ones():
    judgements = [Judgement("fail", "pass", manual_review=True), Judgement("fail", "fail"), Judgement("pass", "pass")]
    blocks = metric_blocks(judgements)
    assert (blocks["include_manual_review"]["n"], blocks["include_manual_review"]["fp"]) == (3, 1)
    assert (blocks["exclude_manual_review"]["n"], blocks["exclude_manual_review"]["fp"]) == (2, 0)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_window_rows_every_logging_steps_and_at_epoch_end():
    clock = Clock()
    window = MetricsWindow(total_groups=10, logging_steps=2, clock=clock)
    clock.now += 2.0
    assert window.add(1, Judgement("fail", "pass")) is None
    row = window.add(1, Judgement("fail", "fail"))
    assert row["event"] == "logging_steps" and (row["epoch"], row["global_step"]) == (1, 2)
    assert (row["elapsed_seconds"], row["groups_per_second"], row["eta_seconds"]) == (2.0, 1.0, 8.0)
    assert row["false_pass_rate"] == 0.5
    assert window.add(1, Judgement("pass", "pass")) is None
    end = window.end_epoch(1)
    assert (end["event"], end["global_step"], end["include_manual_review"]["n"]) == ("epoch_end", 3, 3)
    assert end["false_pass_rate"] == 0.5
    for each in (row, end):
        validate(each, SCHEMA)


def test_the_window_restarts_with_each_epoch():
    window = MetricsWindow(total_groups=4, logging_steps=2, clock=Clock())
    window.add(1, Judgement("pass", "pass"))
    window.end_epoch(1)
    assert window.add(2, Judgement("fail", "fail")) is None  # the epoch-1 ticket does not fill this window
    row = window.add(2, Judgement("fail", "pass"))
    assert (row["include_manual_review"]["n"], row["global_step"]) == (2, 3)
    assert row["eta_seconds"] is None and row["groups_per_second"] is None  # the clock never moved
    validate(row, SCHEMA)


def test_an_epoch_must_end_before_the_next_starts():
    window = MetricsWindow(total_groups=2, logging_steps=5, clock=Clock())
    window.add(1, Judgement("pass", "pass"))
    with pytest.raises(VlqcError, match="epoch 1 is still open"):
        window.add(2, Judgement("pass", "pass"))


def test_window_arguments_are_checked():
    with pytest.raises(VlqcError):
        MetricsWindow(total_groups=1, logging_steps=0)
