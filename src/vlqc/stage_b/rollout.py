"""Stage-B rollout: sample verdict candidates for each ticket, vote, apply the fail-first guardrail.

For every ticket the verdict prompt (`vlqc.inference.prompts.verdict_messages`) is built once. A prompt over
`max_prompt_tokens` is rejected, never truncated: a cut prompt loses image summaries and the verdict
would rest on evidence the model never saw. Every other ticket is sampled `samples_per_decode` times
per sampler of the grid (sample k runs with seed `seed + k`), in batches over tickets, and every answer
is parsed by the strict two-line contract (`vlqc.inference.answers.parse_verdict`). A backend may fail one item
of a batch: it returns a `BackendError` in that slot, the candidate is recorded without text, and
other tickets are unaffected.

Selection (`select`): valid candidates vote; the majority wins, a tie is `fail`. The chosen candidate,
whose Reason is kept, is the lowest-temperature one with the winning verdict (grid order among equals).
`vote_strength` is the winning verdict's share of the valid votes and `low_agreement` marks a share
under `min_agreement`; both describe the model vote, also when the guardrail then overrides it. The
guardrail (`vlqc.stage_b.guardrail.apply`) turns a verdict into `fail` with a rewritten Reason where
the summaries hold a relevant hard negative (source `guardrail`; else `model`).

No valid vote: the verdict is `fail` (never pass without a valid vote). The Reason is the guardrail's
when it has a hard hit, else `NO_VOTE_REASON` with source `no_vote`.

Outcome: every ticket ends in exactly one of `verdicts.jsonl` and `failure_malformed.jsonl`
(`outcome_rows`). A ticket without a valid vote is a hard failure and goes to the failure file only,
with the raw texts; its `fail` selection still stands in `selections.jsonl` (one row per ticket), so
that metrics count it as the fail it is treated as. Failure codes:

    prompt_too_long       the prompt is over max_prompt_tokens; nothing was sampled
    backend_error         every candidate failed in the backend; no text came back
    format_error          texts came back, and every one breaks the two-line format (FORMAT_ERRORS)
    no_valid_candidates   texts came back, some well formed, but none with a usable verdict (a
                          third-state verdict, a forbidden Reason, an unknown verdict word)
    no_candidates         `select` was given no candidates (rollout itself never gets here)

The origin's `selection_error` (an exception inside its selection) has no counterpart: selection here
cannot fail once there is a valid vote.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vlqc.errors import SampleError, VlqcError
from vlqc.inference.answers import Parsed, parse_verdict
from vlqc.inference.profiles import PromptConfig
from vlqc.inference.prompts import verdict_messages
from vlqc.inference.sampling import Sampling
from vlqc.missions import MissionRule
from vlqc.stage_b.guardrail import GuardrailResult, apply, scan
from vlqc.stage_b.tickets import Ticket

TRAJECTORY_SCHEMA = "stage_b_trajectory"
SELECTION_SCHEMA = "stage_b_selection"
VERDICT_SCHEMA = "stage_b_verdict"
FAILURE_SCHEMA = "stage_b_failure"

NO_VOTE = "no_vote"
NO_VOTE_REASON = "总结: 没有有效的模型判定，按不通过处理"
BACKEND_ERROR = "backend_error"
PROMPT_TOO_LONG = "prompt_too_long"
FORMAT_ERROR = "format_error"
NO_VALID_CANDIDATES = "no_valid_candidates"
NO_CANDIDATES = "no_candidates"
# parse_verdict codes of an answer that is not two `Verdict:` / `Reason:` lines at all.
FORMAT_ERRORS = frozenset({"line_count", "field_names", "missing_colon", "empty_reason"})


class BackendError(SampleError):
    """One prompt of a batch got no answer (timeout, OOM, …): `BackendError(code, message)`, the code
    a stable reason."""


class ChatBackend(Protocol):
    def chat(self, prompts: Sequence[tuple[str, str]], sampling: Sampling) -> list[str | BackendError]:
        """One answer or `BackendError` per (system, user) prompt, in order."""

    def count_tokens(self, system: str, user: str) -> int:
        """Tokens of the prompt as the model will see it (chat template included)."""


# --- samplers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerConfig:
    """One entry of a sampler grid (`stage_b.train_grid`, `stage_b.eval_grid`). What an entry leaves out is
    what a plain generate call leaves out (`Sampling`'s defaults), except the seed: 0, so that every sample
    is seeded."""

    temperature: float
    top_p: float = Sampling.top_p
    max_new_tokens: int = Sampling.max_new_tokens
    seed: int = 0
    repetition_penalty: float = Sampling.repetition_penalty

    def __post_init__(self):
        rules = {
            "temperature must be >= 0": self.temperature >= 0,
            "top_p must be within (0, 1]": 0 < self.top_p <= 1,
            "max_new_tokens must be >= 1": self.max_new_tokens >= 1,
            "seed must be >= 0": self.seed >= 0,
            "repetition_penalty must be > 0": self.repetition_penalty > 0,
        }
        problems = [rule for rule, holds in rules.items() if not holds]
        if problems:
            raise VlqcError(f"sampler {self}: {'; '.join(problems)}")

    def sampling(self, sample_index: int) -> Sampling:
        """The generation settings of sample `sample_index`: its own seed, `seed + sample_index`."""
        return Sampling(
            self.max_new_tokens, self.temperature, self.top_p, self.repetition_penalty, self.seed + sample_index
        )


_SAMPLER_FIELDS = tuple(field.name for field in dataclasses.fields(SamplerConfig))


def sampler_grid(entries: Iterable[Mapping[str, Any]]) -> tuple[SamplerConfig, ...]:
    """The sampler grid from config entries (`temperature` required, the rest defaulted)."""
    grid = []
    for n, entry in enumerate(entries, start=1):
        unknown = sorted(set(entry) - set(_SAMPLER_FIELDS))
        if unknown or "temperature" not in entry:
            problem = f"unknown keys {unknown}" if unknown else "no temperature"
            raise VlqcError(f"sampler grid entry {n}: {problem}; keys are {', '.join(_SAMPLER_FIELDS)}")
        grid.append(SamplerConfig(**entry))
    _check_grid(grid)
    return tuple(grid)


def _check_grid(grid: Sequence[SamplerConfig]) -> None:
    if not grid:
        raise VlqcError("the sampler grid needs at least one entry")
    if len(set(grid)) != len(grid):
        raise VlqcError("the sampler grid repeats an entry; its candidates would be copies")


# --- candidates and selection -------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    grid_index: int
    sampler: SamplerConfig
    sample_index: int
    raw: str | None  # None when the backend failed
    parsed: Parsed  # for a backend failure: verdict None, error BACKEND_ERROR
    backend_error: BackendError | None = None

    @classmethod
    def from_output(
        cls, grid_index: int, sampler: SamplerConfig, sample_index: int, output: str | BackendError
    ) -> Candidate:
        if isinstance(output, BackendError):
            return cls(grid_index, sampler, sample_index, None, Parsed(None, "", BACKEND_ERROR), output)
        return cls(grid_index, sampler, sample_index, output, parse_verdict(output))

    @property
    def seed(self) -> int:
        return self.sampler.seed + self.sample_index

    @property
    def valid(self) -> bool:
        return self.parsed.verdict is not None


@dataclass(frozen=True)
class Selection:
    verdict: str  # pass | fail
    reason: str
    source: str  # model | guardrail | no_vote
    vote_strength: float  # share of the winning verdict among valid votes; 0 without one
    low_agreement: bool
    votes: Mapping[str, int]  # pass / fail → valid votes
    chosen: Candidate | None  # None without a valid vote
    guardrail: GuardrailResult


def select(
    candidates: Sequence[Candidate],
    min_agreement: float,
    guardrail: GuardrailResult = GuardrailResult(),
) -> Selection:
    """Majority vote over the valid candidates, then the guardrail (see the module docstring)."""
    if not 0 <= min_agreement <= 1:
        raise VlqcError(f"min_agreement must be within [0, 1], not {min_agreement}")
    counted = Counter(candidate.parsed.verdict for candidate in candidates if candidate.valid)
    votes = {"pass": counted["pass"], "fail": counted["fail"]}
    n_valid = votes["pass"] + votes["fail"]
    if not n_valid:
        verdict, reason, source = apply(None, NO_VOTE_REASON, guardrail)
        source = source if verdict is not None else NO_VOTE
        return Selection("fail", reason, source, 0.0, True, votes, None, guardrail)
    winner = "pass" if votes["pass"] > votes["fail"] else "fail"
    chosen = min((c for c in candidates if c.parsed.verdict == winner), key=lambda c: c.sampler.temperature)
    strength = votes[winner] / n_valid
    verdict, reason, source = apply(winner, chosen.parsed.reason, guardrail)
    return Selection(verdict, reason, source, strength, strength < min_agreement, votes, chosen, guardrail)


@dataclass(frozen=True)
class Failure:
    code: str
    message: str
    raw: tuple[str, ...]  # every text the backend returned for the ticket, in candidate order


def hard_failure(candidates: Sequence[Candidate]) -> Failure | None:
    """Why the candidates give no valid vote, or None when at least one is valid."""
    raw = tuple(c.raw for c in candidates if c.raw is not None)
    if not candidates:
        return Failure(NO_CANDIDATES, "no candidates were generated", raw)
    if any(c.valid for c in candidates):
        return None
    errors = ", ".join(f"{code}×{n}" for code, n in Counter(c.parsed.error for c in candidates).items())
    if not raw:
        first = next(c.backend_error for c in candidates if c.backend_error is not None)
        return Failure(BACKEND_ERROR, f"all {len(candidates)} candidates failed in the backend; first: {first}", raw)
    if all(c.parsed.error in FORMAT_ERRORS for c in candidates if c.raw is not None):
        return Failure(FORMAT_ERROR, f"no answer follows the two-line format ({errors})", raw)
    return Failure(NO_VALID_CANDIDATES, f"no answer gives a usable verdict ({errors})", raw)


# --- rollout ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TicketRollout:
    ticket: Ticket
    candidates: tuple[Candidate, ...]
    selection: Selection
    failure: Failure | None  # set: the ticket goes to failure_malformed, not to verdicts

    @property
    def in_manual_review(self) -> bool:
        """The origin's internal review flag, which splits the metrics: a hard failure or low agreement."""
        return self.failure is not None or self.selection.low_agreement


def rollout(
    tickets: Sequence[Ticket],
    guidance_experiences: Mapping[str, str] | None,
    missions: Mapping[str, Mapping[str, Any]],
    backend: ChatBackend,
    grid: Sequence[SamplerConfig],
    samples_per_decode: int,
    max_prompt_tokens: int,
    *,
    batch_size: int,
    min_agreement: float,
    prompts: PromptConfig | None = None,
) -> list[TicketRollout]:
    """Candidates, selection and outcome of every ticket (one mission), in ticket order.

    `guidance_experiences` is the mission's experiences map (G0, S*, G*) or None for the missions.yaml
    focus. The guardrail judges relevance by the mission's rule in `missions`, not by the guidance.
    `prompts`: the verdict prompt's profile and overrides (docs/prompts.md); None: the default profile.
    """
    _check_rollout_args(tickets, grid, samples_per_decode, max_prompt_tokens, batch_size)
    if not tickets:
        return []
    mission = tickets[0].mission
    texts = [verdict_messages(mission, guidance_experiences, t.per_image, missions, prompts=prompts) for t in tickets]
    rule = MissionRule.of(mission, missions[mission])
    too_long = {i: n for i, prompt in enumerate(texts) if (n := backend.count_tokens(*prompt)) > max_prompt_tokens}
    sampled = [i for i in range(len(tickets)) if i not in too_long]
    candidates = _sample(backend, [texts[i] for i in sampled], grid, samples_per_decode, batch_size)
    by_ticket = dict(zip(sampled, candidates))
    results = []
    for i, ticket in enumerate(tickets):
        own = by_ticket.get(i, ())
        selection = select(own, min_agreement, scan(ticket.per_image, rule))
        if i in too_long:
            message = f"the prompt has {too_long[i]} tokens, over max_prompt_tokens={max_prompt_tokens}"
            failure: Failure | None = Failure(PROMPT_TOO_LONG, message, ())
        else:
            failure = hard_failure(own)
        results.append(TicketRollout(ticket, own, selection, failure))
    return results


def _check_rollout_args(
    tickets: Sequence[Ticket], grid: Sequence[SamplerConfig], samples: int, max_tokens: int, batch_size: int
) -> None:
    _check_grid(grid)
    for name, value in (("samples_per_decode", samples), ("max_prompt_tokens", max_tokens), ("batch_size", batch_size)):
        if value < 1:
            raise VlqcError(f"{name} must be >= 1, not {value}")
    missions = sorted({ticket.mission for ticket in tickets})
    if len(missions) > 1:
        raise VlqcError(f"a rollout covers one mission; the tickets have {', '.join(missions)}")


def _sample(
    backend: ChatBackend,
    prompts: Sequence[tuple[str, str]],
    grid: Sequence[SamplerConfig],
    samples: int,
    batch_size: int,
) -> list[tuple[Candidate, ...]]:
    """Per prompt, its candidates in grid order, then sample order."""
    per_prompt: list[list[Candidate]] = [[] for _ in prompts]
    for grid_index, sampler in enumerate(grid):
        for k in range(samples):
            for start in range(0, len(prompts), batch_size):
                batch = prompts[start : start + batch_size]
                outputs = backend.chat(batch, sampler.sampling(k))
                if len(outputs) != len(batch):
                    raise VlqcError(f"the backend answered {len(outputs)} of {len(batch)} prompts")
                for offset, output in enumerate(outputs):
                    per_prompt[start + offset].append(Candidate.from_output(grid_index, sampler, k, output))
    return [tuple(candidates) for candidates in per_prompt]


# --- rows ---------------------------------------------------------------------------------------


def _ticket_fields(ticket: Ticket) -> dict[str, str]:
    return {"ticket_key": ticket.ticket_key, "group_id": ticket.group_id, "label": ticket.label}


def trajectory_rows(result: TicketRollout, epoch: int) -> list[dict[str, Any]]:
    """`trajectories.jsonl` rows: one per candidate."""
    rows = []
    for candidate in result.candidates:
        row = {
            **_ticket_fields(result.ticket),
            "epoch": epoch,
            "sampler": dataclasses.asdict(candidate.sampler),
            "grid_index": candidate.grid_index,
            "sample_index": candidate.sample_index,
            "seed": candidate.seed,
            "raw": candidate.raw,
            "verdict": candidate.parsed.verdict,
            "reason": candidate.parsed.reason,
            "error": candidate.parsed.error,
        }
        if candidate.backend_error is not None:
            row["detail"] = str(candidate.backend_error)
        rows.append(row)
    return rows


def selection_row(result: TicketRollout, epoch: int) -> dict[str, Any]:
    """The `selections.jsonl` row of a ticket, failed ones included."""
    selection, chosen = result.selection, result.selection.chosen
    return {
        **_ticket_fields(result.ticket),
        "epoch": epoch,
        "verdict": selection.verdict,
        "reason": selection.reason,
        "source": selection.source,
        "vote_strength": selection.vote_strength,
        "low_agreement": selection.low_agreement,
        "votes": dict(selection.votes),
        "n_candidates": len(result.candidates),
        "chosen": None
        if chosen is None
        else {
            "grid_index": chosen.grid_index,
            "sample_index": chosen.sample_index,
            "temperature": chosen.sampler.temperature,
        },
        "guardrail_hits": [dataclasses.asdict(hit) for hit in selection.guardrail.hits],
        "failure": None if result.failure is None else result.failure.code,
        "in_manual_review": result.in_manual_review,
    }


def outcome_rows(results: Iterable[TicketRollout]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(`verdicts.jsonl` rows, `failure_malformed.jsonl` rows): each ticket in exactly one of them."""
    verdicts, failures = [], []
    for result in results:
        fields = _ticket_fields(result.ticket)
        if result.failure is not None:
            failure = result.failure
            failures.append({**fields, "code": failure.code, "message": failure.message, "raw": list(failure.raw)})
            continue
        selection = result.selection
        verdicts.append(
            {
                **fields,
                "verdict": selection.verdict,
                "reason": selection.reason,
                "source": selection.source,
                "vote_strength": selection.vote_strength,
                "low_agreement": selection.low_agreement,
            }
        )
    return verdicts, failures
