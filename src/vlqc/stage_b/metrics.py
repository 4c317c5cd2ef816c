"""Stage-B metrics: agreement of the verdicts with the human labels, false pass first.

The positive class is `pass`, as in the origin's metrics:

    fp   false pass: human label fail, model verdict pass. The business caps it (under 5%): a bad
         installation that the model lets through. `false_pass_rate` is the headline number.
    fn   false fail: human label pass, model verdict fail.

Each rate is over the tickets whose label can be wronged that way, as in the rule-search gate:

    fp_rate = false_pass_rate = fp / tickets labelled fail
    fn_rate = fn / tickets labelled pass
    acc     = (n - fp - fn) / n

A rate whose denominator is 0 is None: with no fail-labelled ticket, the false-pass rate is unknown,
not 0. A ticket without a valid vote counts with its selection verdict, `fail`.

`metrics.jsonl` rows carry two blocks: `include_manual_review` over all tickets and
`exclude_manual_review` over the tickets not marked `manual_review`. The engine marks a ticket that
the rollout flagged (a hard failure or low agreement, `TicketRollout.in_manual_review`) or that sits
in the human review queue (need_review_queue.jsonl).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from vlqc.errors import VlqcError

VERDICTS = ("pass", "fail")
LOGGING_STEPS, EPOCH_END = "logging_steps", "epoch_end"


class Judgement(NamedTuple):
    label: str  # human label
    verdict: str  # selected verdict
    manual_review: bool = False  # left out of the exclude_manual_review block


def confusion(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """`{acc, fn, fp, fn_rate, fp_rate, n}` of (label, verdict) pairs; see the module docstring."""
    counts = {(label, verdict): 0 for label in VERDICTS for verdict in VERDICTS}
    for label, verdict in pairs:
        if (label, verdict) not in counts:
            raise VlqcError(f"labels and verdicts must be pass or fail, got label {label!r}, verdict {verdict!r}")
        counts[label, verdict] += 1
    fp, fn = counts["fail", "pass"], counts["pass", "fail"]
    n_fail, n_pass = fp + counts["fail", "fail"], fn + counts["pass", "pass"]
    n = n_fail + n_pass
    return {
        "acc": _rate(n - fp - fn, n),
        "fn": fn,
        "fp": fp,
        "fn_rate": _rate(fn, n_pass),
        "fp_rate": _rate(fp, n_fail),
        "n": n,
    }


def _rate(count: int, total: int) -> float | None:
    return count / total if total else None


def metric_blocks(judgements: Iterable[Judgement]) -> dict[str, dict[str, Any]]:
    """The two blocks of a metrics row, with and without the tickets flagged for manual review."""
    judgements = list(judgements)
    return {
        "exclude_manual_review": confusion((j.label, j.verdict) for j in judgements if not j.manual_review),
        "include_manual_review": confusion((j.label, j.verdict) for j in judgements),
    }


class MetricsWindow:
    """Rows for `metrics.jsonl` while a run judges tickets.

    `add` counts one judged ticket and returns a `logging_steps` row over the last `logging_steps`
    tickets of the epoch when that many have gathered; `end_epoch` returns the `epoch_end` row over the
    whole epoch (a partial window is covered by it, not reported on its own). Throughput is the run's
    average since the window was made; the ETA assumes `total_groups` tickets in all (every epoch).
    """

    def __init__(self, total_groups: int, logging_steps: int, clock: Callable[[], float] = time.monotonic):
        if total_groups < 0 or logging_steps < 1:
            raise VlqcError(f"need total_groups >= 0 and logging_steps >= 1, got {total_groups}, {logging_steps}")
        self.total_groups = total_groups
        self.logging_steps = logging_steps
        self.global_step = 0
        self._clock = clock
        self._start = clock()
        self._epoch: int | None = None
        self._window: list[Judgement] = []
        self._epoch_judgements: list[Judgement] = []

    def add(self, epoch: int, judgement: Judgement) -> dict[str, Any] | None:
        self._check_epoch(epoch)
        self._epoch = epoch
        self.global_step += 1
        self._window.append(judgement)
        self._epoch_judgements.append(judgement)
        if len(self._window) < self.logging_steps:
            return None
        row = self._row(LOGGING_STEPS, epoch, self._window)
        self._window = []
        return row

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        self._check_epoch(epoch)
        row = self._row(EPOCH_END, epoch, self._epoch_judgements)
        self._epoch, self._window, self._epoch_judgements = None, [], []
        return row

    def _check_epoch(self, epoch: int) -> None:
        if self._epoch is not None and epoch != self._epoch:
            raise VlqcError(f"epoch {self._epoch} is still open; end it before epoch {epoch}")

    def _row(self, event: str, epoch: int, judgements: list[Judgement]) -> dict[str, Any]:
        elapsed = self._clock() - self._start
        speed = self.global_step / elapsed if elapsed > 0 else None
        remaining = max(self.total_groups - self.global_step, 0)
        blocks = metric_blocks(judgements)
        return {
            "event": event,
            "epoch": epoch,
            "global_step": self.global_step,
            "elapsed_seconds": elapsed,
            "groups_per_second": speed,
            "eta_seconds": remaining / speed if speed else None,
            "false_pass_rate": blocks["include_manual_review"]["fp_rate"],
            **blocks,
        }
