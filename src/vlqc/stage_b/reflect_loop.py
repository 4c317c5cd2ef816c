"""Stage-B reflection (train mode): learn guidance from one epoch's mismatches, every change gated.

`Reflector.reflect_epoch` works on the tickets whose selected verdict disagrees with the human label or
whose vote was weak (low agreement). Hard failures (no valid vote) are prompt or model problems, not rule
problems, and are left out; so are tickets already in the review queue (stop-gradient for the rest of
the run). They are reflected on in batches of `batch_size`, one reflection cycle per batch:

1. Decision pass (sees the labels): the tickets it names have no learnable direction and go to the
   human review queue with `reflection_no_evidence_after_gt`.
2. Ops pass on the rest, the learnable set L: rule operations and hypotheses. Hypotheses join the pool;
   every operation is tried as a guidance change (below).
3. Closure: tickets of L that no operation or hypothesis cites (L ≠ E ∪ H) are asked about again in
   batches of `batch_size // 2**attempt`, up to `retry_budget_per_group_per_epoch` more times; still
   uncovered then, they go to the review queue as `budget_exhausted`. So does every ticket still waiting
   when `max_calls_per_epoch` reflection calls have been made (its `reflection_id` is then null).
4. Hypotheses with enough support (`promote_min_cycles` cycles, `promote_min_tickets` distinct tickets)
   are promoted: an `add` of their text, tried as a guidance change like any other.

An answer that breaks its pass's contract is asked for again, `format_retries` times (every attempt is
one call); then the attempts go to failure_malformed (`reflection_format_error`, or
`reflection_backend_error` when no text came back) and the batch counts as uncovered. A prompt over
`max_prompt_tokens` is not sent (`reflection_prompt_too_long`); the closure retry then asks about its
tickets in smaller batches.

A guidance change is applied to a copy of the guidance (S*/G0 protection, add→update by similarity,
forbidden phrases: `vlqc.stage_b.guidance`), the copy's rollout of the whole train pool is compared with
the current verdicts by the rule-search gate (`vlqc.stage_b.gate`), and only an accepted copy replaces
the guidance (saved with a snapshot) and its rollout the current verdicts. Every try is a `change` row in
reflection.jsonl with the gate's numbers. At most `change_cap_per_epoch` changes are accepted per epoch,
and after `patience` cycles in a row without an accepted change the epoch's reflection stops (the
rule-search early stop).

Rule lifecycle, before an epoch's reflection: a rule learned from tickets of the pool gets a hit for each
of them now judged right and a miss for each one still wrong; rules under `prune_min_confidence` after
`prune_min_misses` misses are deleted through the gate with min_rer 0: a prune must not add errors,
change many verdicts or raise false passes.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, Protocol

from vlqc.errors import VlqcError
from vlqc.inference.sampling import Sampling
from vlqc.schemas import defaults
from vlqc.stage_b.gate import EarlyStop, Judged, Thresholds, decide
from vlqc.stage_b.guidance import Guidance, Operation
from vlqc.stage_b.hypotheses import HypothesisPool
from vlqc.stage_b.reflection import (
    Hypothesis,
    ReflectionFormatError,
    closure,
    decision_prompt,
    ops_prompt,
    parse_decision,
    parse_ops,
    retry_batches,
)
from vlqc.stage_b.rollout import BackendError, ChatBackend, TicketRollout

log = logging.getLogger(__name__)

REFLECTION_FILE = "reflection.jsonl"
REVIEW_FILE = "need_review_queue.jsonl"
FAILURE_FILE = "failure_malformed.jsonl"
EVENTS_FILE = "hypothesis_events.jsonl"

NO_EVIDENCE = "reflection_no_evidence_after_gt"
BUDGET_EXHAUSTED = "budget_exhausted"
FORMAT_ERROR = "reflection_format_error"
BACKEND_ERROR = "reflection_backend_error"
PROMPT_TOO_LONG = "reflection_prompt_too_long"

# The config schema's `stage_b` section is the one home of these defaults.
DEFAULTS = defaults("config", "stage_b")

# Pool verdicts by ticket key for a guidance's experiences map: how a candidate change is judged.
Judge = Callable[[Mapping[str, str]], dict[str, TicketRollout]]


class Sink(Protocol):
    """Where reflection rows go (the run folder's files); rows are validated there."""

    def add(self, name: str, rows: Iterable[dict[str, Any]]) -> None: ...

    def flush(self) -> None: ...


@dataclass(frozen=True)
class ReflectionSettings:
    """The `stage_b.reflection` section, and the keys of `stage_b` and `stage_b.gate` reflection reads."""

    batch_size: int = DEFAULTS["reflection"]["batch_size"]
    max_operations: int = DEFAULTS["reflection"]["max_operations"]
    format_retries: int = DEFAULTS["reflection"]["format_retries"]
    retry_budget_per_group_per_epoch: int = DEFAULTS["reflection"]["retry_budget_per_group_per_epoch"]
    max_calls_per_epoch: int = DEFAULTS["reflection"]["max_calls_per_epoch"]
    change_cap_per_epoch: int = DEFAULTS["reflection"]["change_cap_per_epoch"]
    temperature: float = DEFAULTS["reflection"]["temperature"]
    max_new_tokens: int = DEFAULTS["reflection"]["max_new_tokens"]
    promote_min_cycles: int = DEFAULTS["reflection"]["promote_min_cycles"]
    promote_min_tickets: int = DEFAULTS["reflection"]["promote_min_tickets"]
    prune_min_confidence: float = DEFAULTS["reflection"]["prune_min_confidence"]
    prune_min_misses: int = DEFAULTS["reflection"]["prune_min_misses"]
    max_prompt_tokens: int = DEFAULTS["max_prompt_tokens"]
    seed: int = DEFAULTS["seed"]
    gate: Thresholds = Thresholds()
    patience: int = DEFAULTS["gate"]["patience"]

    def __post_init__(self):
        at_least_one = ("batch_size", "max_calls_per_epoch", "max_new_tokens", "max_prompt_tokens", "patience")
        at_least_zero = ("max_operations", "format_retries", "retry_budget_per_group_per_epoch", "change_cap_per_epoch")
        problems = [f"{name} must be >= 1" for name in at_least_one if getattr(self, name) < 1]
        problems += [f"{name} must be >= 0" for name in at_least_zero if getattr(self, name) < 0]
        if problems:
            raise VlqcError(f"reflection settings: {'; '.join(problems)}")


class Outcome(NamedTuple):
    accepted: bool
    reason: str | None  # why not: a guidance refusal code, the gate's failed criteria, or the cap


@dataclass
class _Epoch:
    """One epoch's reflection: the pool's current verdicts and what is left to spend."""

    number: int
    current: dict[str, TicketRollout]
    calls_left: int
    changes_left: int
    early_stop: EarlyStop


class _OutOfCalls(Exception):
    """max_calls_per_epoch is spent; `keys` are the tickets of the cycle that were not routed yet."""

    def __init__(self, keys: Sequence[str]):
        super().__init__(f"no reflection call left for {len(keys)} tickets")
        self.keys = tuple(keys)


def judged(current: Mapping[str, TicketRollout]) -> dict[str, Judged]:
    return {key: Judged(result.ticket.label, result.selection.verdict) for key, result in current.items()}


class Reflector:
    """The train-mode reflection of one run; `guidance` is always the latest accepted guidance."""

    def __init__(
        self,
        guidance: Guidance,
        pool: HypothesisPool,
        judge: Judge,
        backend: ChatBackend,
        settings: ReflectionSettings,
        sink: Sink,
        save_guidance: Callable[[Guidance], None],
    ):
        self.guidance = guidance
        self.pool = pool
        self.judge = judge
        self.backend = backend
        self.settings = settings
        self.sink = sink
        self.save_guidance = save_guidance
        self.cycle = 0  # the last cycle run
        self.queued: dict[str, dict[str, Any]] = {}  # ticket key → its review item
        self.reflections: dict[str, list[str]] = defaultdict(list)  # ticket key → reflection ids that saw it

    # --- epoch ----------------------------------------------------------------------------------

    def reflect_epoch(self, epoch: int, current: Mapping[str, TicketRollout]) -> dict[str, TicketRollout]:
        """Reflect on one epoch's rollout; returns the pool's verdicts under the guidance it ends with."""
        s = self.settings
        state = _Epoch(epoch, dict(current), s.max_calls_per_epoch, s.change_cap_per_epoch, EarlyStop(s.patience))
        self._lifecycle(state)
        pending = self._wanting_reflection(state, state.current)
        for attempt in range(s.retry_budget_per_group_per_epoch + 1):
            if not pending:
                break
            pending = self._round(state, pending, attempt)
            if pending is None:
                return state.current
        note = f"在{s.retry_budget_per_group_per_epoch}次重试后仍未被任何规则或假设覆盖"
        # Only those still wrong: a change accepted after their last cycle may have fixed them.
        self._queue(state, self._wanting_reflection(state, pending), BUDGET_EXHAUSTED, self._last_reflection, note)
        self.sink.flush()
        return state.current

    def _wanting_reflection(self, state: _Epoch, keys: Iterable[str]) -> list[str]:
        """Keys still mismatched or weakly voted under the current guidance, not queued, not hard failures."""
        wanted = []
        for key in keys:
            result = state.current[key]
            weak = result.selection.verdict != result.ticket.label or result.selection.low_agreement
            if weak and result.failure is None and key not in self.queued:
                wanted.append(key)
        return wanted

    def _round(self, state: _Epoch, keys: Sequence[str], attempt: int) -> list[str] | None:
        """One closure round over `keys`; the uncovered ones, or None when the epoch's reflection stopped."""
        uncovered: list[str] = []
        batches = retry_batches(self._wanting_reflection(state, keys), self.settings.batch_size, attempt)
        for index, batch in enumerate(batches):
            try:
                uncovered += self._cycle(state, batch, attempt)
            except _OutOfCalls as out:
                waiting = [*out.keys, *(key for later in batches[index + 1 :] for key in later), *uncovered]
                waiting = self._wanting_reflection(state, waiting)
                note = f"本轮反思调用已达上限 max_calls_per_epoch={self.settings.max_calls_per_epoch}"
                self._queue(state, waiting, BUDGET_EXHAUSTED, lambda key: None, note)
                self.sink.flush()
                return None
            if state.early_stop.should_stop:
                log.info(
                    "epoch %d: %d cycles without an accepted change; reflection stops",
                    state.number,
                    state.early_stop.idle_rounds,
                )
                return None
        return uncovered

    def _last_reflection(self, key: str) -> str | None:
        seen = self.reflections.get(key)
        return seen[-1] if seen else None

    # --- one cycle ------------------------------------------------------------------------------

    def _cycle(self, state: _Epoch, batch: Sequence[str], attempt: int) -> list[str]:
        """Decision and ops pass over one batch, its changes and promotions; returns its uncovered keys."""
        if state.calls_left < 1:
            raise _OutOfCalls(batch)
        self.cycle += 1
        rid = f"epoch{state.number}-cycle{self.cycle}"
        for key in batch:
            self.reflections[key].append(rid)
        row = _cycle_row(rid, state.number, self.cycle, attempt, batch)
        try:
            return self._passes(state, row, batch)
        except _OutOfCalls:
            self._end_cycle(state, row, "out_of_calls", 0, [])
            raise

    def _passes(self, state: _Epoch, row: dict[str, Any], batch: Sequence[str]) -> list[str]:
        rid = row["reflection_id"]
        tickets = {key: _reflection_ticket(state.current[key]) for key in batch}
        mission = state.current[batch[0]].ticket.mission
        prompt = decision_prompt(mission, self.guidance.experiences, list(tickets.values()))
        decision = self._ask(state, rid, "decision", batch, prompt, partial(parse_decision, batch_keys=batch))
        if decision is None:
            return self._end_cycle(state, row, "decision_failed", 0, list(batch))
        row.update(
            no_evidence=list(decision.no_evidence),
            decision_analysis=decision.analysis,
            dropped=[d._asdict() for d in decision.dropped],
        )
        self._queue(state, decision.no_evidence, NO_EVIDENCE, lambda key: rid, decision.analysis or None)
        learnable = [key for key in batch if key not in decision.no_evidence]
        row["learnable"] = learnable
        if not learnable:
            return self._end_cycle(state, row, "ok", 0, [])
        max_operations = self.settings.max_operations
        prompt = ops_prompt(mission, self.guidance.experiences, [tickets[key] for key in learnable], max_operations)
        parse = partial(parse_ops, learnable_keys=learnable, max_operations=max_operations)
        ops = self._ask(state, rid, "ops", learnable, prompt, parse)
        if ops is None:
            return self._end_cycle(state, row, "ops_failed", 0, learnable)
        for hypothesis in ops.hypotheses:
            self.pool.observe(hypothesis, self.cycle, rid)
        covered, uncovered = closure(learnable, ops.operations, ops.hypotheses)
        row.update(
            has_evidence=ops.has_evidence,
            evidence_analysis=ops.analysis,
            operations=[_op_json(op) for op in ops.operations],
            hypotheses=[_hypothesis_json(h) for h in ops.hypotheses],
            covered=list(covered),
            uncovered=list(uncovered),
            dropped=row["dropped"] + [d._asdict() for d in ops.dropped],
        )
        group_ids = list(dict.fromkeys(state.current[key].ticket.group_id for key in batch))
        accepted = sum(self._change(state, op, rid, "reflection", group_ids).accepted for op in ops.operations)
        return self._end_cycle(state, row, "ok", accepted + self._promote(state, rid), list(uncovered))

    def _end_cycle(
        self, state: _Epoch, row: dict[str, Any], status: str, accepted: int, uncovered: list[str]
    ) -> list[str]:
        row.update(status=status, accepted_changes=accepted, guidance_step=self.guidance.step)
        self.sink.add(REFLECTION_FILE, [row])
        self.sink.add(EVENTS_FILE, self.pool.drain_events())
        self.sink.flush()
        state.early_stop.record(accepted > 0)
        log.info(
            "%s: %d tickets, %s, %d accepted changes, %d uncovered",
            row["reflection_id"],
            len(row["ticket_keys"]),
            status,
            accepted,
            len(uncovered),
        )
        return uncovered

    def _ask(
        self,
        state: _Epoch,
        rid: str,
        which: str,
        keys: Sequence[str],
        prompt: tuple[str, str],
        parse: Callable[[str], Any],
    ) -> Any:
        """The parsed answer of one pass, asked up to 1 + format_retries times; None after a failure row."""
        s = self.settings
        tokens = self.backend.count_tokens(*prompt)
        if tokens > s.max_prompt_tokens:
            message = f"the prompt has {tokens} tokens, over max_prompt_tokens={s.max_prompt_tokens}"
            return self._fail(state, rid, which, keys, PROMPT_TOO_LONG, message, [])
        raw: list[str] = []
        problems: list[str] = []
        for attempt in range(s.format_retries + 1):
            if state.calls_left < 1:
                raise _OutOfCalls(keys)
            state.calls_left -= 1
            sampling = Sampling(s.max_new_tokens, s.temperature, seed=s.seed + attempt)
            (answer,) = self.backend.chat([prompt], sampling)
            if isinstance(answer, BackendError):
                problems.append(f"attempt {attempt + 1}: {answer}")
                continue
            raw.append(answer)
            try:
                return parse(answer)
            except ReflectionFormatError as exc:
                problems.append(f"attempt {attempt + 1}: {exc}")
        return self._fail(state, rid, which, keys, FORMAT_ERROR if raw else BACKEND_ERROR, "; ".join(problems), raw)

    def _fail(
        self, state: _Epoch, rid: str, which: str, keys: Sequence[str], code: str, message: str, raw: list[str]
    ) -> None:
        log.warning("%s %s pass: %s: %s", rid, which, code, message)
        self.sink.add(
            FAILURE_FILE,
            [
                {
                    "code": code,
                    "reflection_id": rid,
                    "epoch": state.number,
                    "cycle": self.cycle,
                    "pass": which,
                    "ticket_keys": list(keys),
                    "message": message,
                    "raw": raw,
                }
            ],
        )

    # --- guidance changes -----------------------------------------------------------------------

    def _change(
        self,
        state: _Epoch,
        op: Operation,
        rid: str,
        origin: str,
        group_ids: Sequence[str] = (),
        thresholds: Thresholds | None = None,
    ) -> Outcome:
        """Try one op on a copy of the guidance; the copy replaces it only if the gate accepts."""
        row: dict[str, Any] = {
            "event": "change",
            "reflection_id": rid,
            "epoch": state.number,
            "cycle": self.cycle,
            "origin": origin,
            "op": _op_json(op),
            "key": op.key,
            "action": None,
            "gate": None,
        }
        if state.changes_left < 1:
            outcome = Outcome(False, f"change_cap_per_epoch={self.settings.change_cap_per_epoch} reached")
            return self._record_change(row, "capped", outcome)
        candidate = copy.deepcopy(self.guidance)
        applied = candidate.apply(op, rid, group_ids)
        if not applied.accepted:
            return self._record_change(row, "refused", Outcome(False, applied.reason))
        after = self.judge(candidate.experiences)
        decision = decide(
            judged(state.current),
            judged(after),
            applied.action,
            thresholds or self.settings.gate,
            seed=self.settings.seed + self.cycle,
        )
        row.update(
            key=applied.key,
            action=applied.action,
            gate={"accepted": decision.accepted, "reasons": decision.reasons, "numbers": decision.numbers},
        )
        if not decision.accepted:
            return self._record_change(row, "rejected", Outcome(False, "; ".join(decision.reasons)))
        self.guidance = candidate
        self.save_guidance(candidate)
        state.current = after
        state.changes_left -= 1
        return self._record_change(row, "accepted", Outcome(True, None))

    def _record_change(self, row: dict[str, Any], outcome_name: str, outcome: Outcome) -> Outcome:
        row.update(outcome=outcome_name, reason=outcome.reason, guidance_step=self.guidance.step)
        self.sink.add(REFLECTION_FILE, [row])
        log.info(
            "%s %s %s %s: %s%s",
            row["reflection_id"],
            row["origin"],
            row["op"]["op"],
            row["key"] or "(new)",
            outcome_name,
            f" ({outcome.reason})" if outcome.reason else "",
        )
        return outcome

    def _promote(self, state: _Epoch, rid: str) -> int:
        """Try every promotable hypothesis as an add; returns how many were accepted."""
        s = self.settings
        accepted = 0
        for entry in self.pool.promotable(s.promote_min_cycles, s.promote_min_tickets):
            if state.changes_left < 1:
                break  # stays open for a later epoch
            op = Operation(
                "add",
                text=entry.text,
                rationale=f"假设晋升: {len(entry.cycles)}轮, {len(entry.tickets)}单",
                evidence=tuple(sorted(entry.tickets)),
            )
            outcome = self._change(state, op, rid, "promotion")
            if outcome.accepted:
                self.pool.promote(entry.signature, self.cycle)
                accepted += 1
            else:
                self.pool.reject(entry.signature, self.cycle, outcome.reason or "refused")
        return accepted

    def _lifecycle(self, state: _Epoch) -> None:
        """Hits and misses of rules learned from pool tickets, then gated deletes of the failing ones."""
        if self._count_hits(state.current):
            self.save_guidance(self.guidance)
        doomed = copy.deepcopy(self.guidance).prune(self.settings.prune_min_confidence, self.settings.prune_min_misses)
        no_harm = dataclasses.replace(self.settings.gate, min_rer=0.0)
        for key in doomed:
            op = Operation("delete", key=key, rationale="命中率低于阈值")
            self._change(state, op, f"epoch{state.number}-lifecycle", "prune", thresholds=no_harm)
        self.sink.flush()

    def _count_hits(self, current: Mapping[str, TicketRollout]) -> bool:
        counted = False
        for key, meta in list(self.guidance.metadata.items()):
            if key not in self.guidance.experiences:
                continue
            for source in meta.get("sources", []):
                result = current.get(source)  # sources also hold group ids, and tickets of other pools
                if result is None:
                    continue
                if result.selection.verdict == result.ticket.label:
                    self.guidance.record_hit(key)
                else:
                    self.guidance.record_miss(key)
                counted = True
        return counted

    # --- review queue ---------------------------------------------------------------------------

    def _queue(
        self,
        state: _Epoch,
        keys: Iterable[str],
        code: str,
        reflection_id: Callable[[str], str | None],
        note: str | None,
    ) -> None:
        for key in keys:
            if key in self.queued:
                continue
            result = state.current[key]
            item = {
                "ticket_key": key,
                "group_id": result.ticket.group_id,
                "mission": result.ticket.mission,
                "gt_label": result.ticket.label,
                "pred_verdict": result.selection.verdict,
                "pred_reason": result.selection.reason,
                "reason_code": code,
                "epoch": state.number,
                "reflection_cycle": self.cycle,
                "reflection_id": reflection_id(key),
                "uncertainty_note": note,
            }
            self.queued[key] = item
            self.sink.add(REVIEW_FILE, [item])


def _reflection_ticket(result: TicketRollout) -> dict[str, Any]:
    """A ticket as the reflection prompts take it."""
    return {
        "ticket_key": result.ticket.ticket_key,
        "gt_label": result.ticket.label,
        "pred_verdict": result.selection.verdict,
        "pred_reason": result.selection.reason,
        "per_image": {f"image_{n}": summary for n, summary in enumerate(result.ticket.per_image, start=1)},
    }


def _cycle_row(rid: str, epoch: int, cycle: int, attempt: int, batch: Sequence[str]) -> dict[str, Any]:
    """A `cycle` row of reflection.jsonl with the pass fields still empty."""
    return {
        "event": "cycle",
        "reflection_id": rid,
        "epoch": epoch,
        "cycle": cycle,
        "attempt": attempt,
        "ticket_keys": list(batch),
        "no_evidence": [],
        "decision_analysis": None,
        "learnable": [],
        "has_evidence": None,
        "evidence_analysis": None,
        "operations": [],
        "hypotheses": [],
        "covered": [],
        "uncovered": [],
        "dropped": [],
    }


def _hypothesis_json(hypothesis: Hypothesis) -> dict[str, Any]:
    return {
        "text": hypothesis.text,
        "falsifier": hypothesis.falsifier,
        "evidence": list(hypothesis.evidence),
        "dimension": hypothesis.dimension,
    }


def _op_json(op: Operation) -> dict[str, Any]:
    return {
        "op": op.op,
        "key": op.key,
        "text": op.text,
        "rationale": op.rationale,
        "evidence": list(op.evidence),
        "merged_from": list(op.merged_from),
    }
