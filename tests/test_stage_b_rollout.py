"""Stage-B rollout logic with a scripted backend: sampling grid, vote, guardrail, failures and rows."""

from __future__ import annotations

from collections import defaultdict

import pytest
from conftest import REPO

from vlqc.data.summary import build_summary
from vlqc.errors import VlqcError
from vlqc.inference.sampling import Sampling
from vlqc.missions import MissionRule, load_missions
from vlqc.schemas import validate
from vlqc.stage_b.guardrail import scan
from vlqc.stage_b.rollout import (
    FAILURE_SCHEMA,
    NO_VOTE,
    NO_VOTE_REASON,
    SELECTION_SCHEMA,
    TRAJECTORY_SCHEMA,
    VERDICT_SCHEMA,
    BackendError,
    Candidate,
    SamplerConfig,
    hard_failure,
    outcome_rows,
    rollout,
    sampler_grid,
    select,
    selection_row,
    trajectory_rows,
)
from vlqc.stage_b.tickets import Ticket

MISSIONS = load_missions(REPO / "config" / "missions.yaml")
MISSION = "BBU安装方式检查（正装）"
SHIELD_G0 = MISSIONS["挡风板安装检查"]["focus"]
BAD_SCREWS = build_summary(["类别=BBU安装螺丝,可见性=完整,符合性=不符合,问题=露铜"], "BBU")

PASS = "Verdict: 通过\nReason: Image1: 螺丝齐全; 总结: 任务要求均满足"
FAIL = "Verdict: 不通过\nReason: Image1: 螺丝缺少; 总结: 存在与任务相关的问题"
BROKEN = "通过"  # one line: line_count
THIRD_STATE = "Verdict: 待复核\nReason: 图片模糊"
ONE = (SamplerConfig(temperature=0.3),)
# How a rollout batches and when a vote is weak: the values of the config's defaults, chosen here.
BATCHING = {"batch_size": 8, "min_agreement": 0.8}


def passing(reason: str) -> str:
    return f"Verdict: 通过\nReason: {reason}"


def ticket(n: int, summary: str | None = None, label: str = "fail") -> Ticket:
    """Ticket n; its default summary (`BBU设备×1，BBU安装螺丝×<n+1>`) tells its prompt from the others."""
    gid = f"QC-T-20240101-{n}"
    return Ticket(f"{gid}::{label}", gid, label, MISSION, (summary or f"BBU设备×1，BBU安装螺丝×{n + 1}",))


class ScriptedBackend:
    """Answers each ticket's prompts from its own script, in call order (grid order, then sample order).

    A ticket is recognised by its summary inside the user text. Tokens are characters, except for
    summaries given a count in `tokens`.
    """

    def __init__(self, script: dict[str, list[str | BackendError]], tokens: dict[str, int] | None = None):
        self.script = {summary: list(answers) for summary, answers in script.items()}
        self.tokens = tokens or {}
        self.calls: list[tuple[list[str], Sampling]] = []  # (users, sampling) per chat call
        self.answered: dict[str, int] = defaultdict(int)

    def _summary(self, user: str) -> str:
        (summary,) = [s for s in self.script if s in user]
        return summary

    def chat(self, prompts, sampling):
        self.calls.append(([user for _, user in prompts], sampling))
        answers = []
        for _, user in prompts:
            summary = self._summary(user)
            answers.append(self.script[summary][self.answered[summary]])
            self.answered[summary] += 1
        return answers

    def count_tokens(self, system, user):
        return self.tokens.get(self._summary(user), len(system) + len(user))


def run(tickets, script, grid=ONE, samples=1, guidance=None, tokens=None, **kwargs):
    backend = ScriptedBackend({t.per_image[0]: script[n] for n, t in enumerate(tickets)}, tokens)
    results = rollout(tickets, guidance, MISSIONS, backend, grid, samples, 4096, **{**BATCHING, **kwargs})
    return results, backend


def one(answers, grid=ONE, samples=1, **kwargs):
    (result,), _ = run([ticket(0)], [answers], grid, samples, **kwargs)
    return result


def grid_of(*temperatures):
    return tuple(SamplerConfig(temperature=t) for t in temperatures)


# --- sampling -----------------------------------------------------------------------------------


def test_each_grid_entry_runs_samples_per_decode_times_with_distinct_seeds_in_ticket_batches():
    tickets = [ticket(n) for n in range(3)]
    grid = (SamplerConfig(0.3, seed=10), SamplerConfig(0.5, seed=20), SamplerConfig(0.7, seed=30))
    results, backend = run(tickets, [[PASS] * 6] * 3, grid, samples=2, batch_size=2)
    assert [len(r.candidates) for r in results] == [6, 6, 6]
    assert [(c.grid_index, c.sample_index, c.seed) for c in results[0].candidates] == [
        (0, 0, 10),
        (0, 1, 11),
        (1, 0, 20),
        (1, 1, 21),
        (2, 0, 30),
        (2, 1, 31),
    ]
    # Per (sampler, sample): one batch of two tickets, then one of the third.
    assert [len(users) for users, _ in backend.calls] == [2, 1] * 6
    assert [(s.temperature, s.seed) for _, s in backend.calls[::2]] == [
        (0.3, 10),
        (0.3, 11),
        (0.5, 20),
        (0.5, 21),
        (0.7, 30),
        (0.7, 31),
    ]


def test_prompt_over_the_limit_is_rejected_never_sent_and_others_still_run():
    tickets = [ticket(0), ticket(1)]
    results, backend = run(tickets, [[PASS], [PASS]], tokens={tickets[0].per_image[0]: 4097})
    too_long, fine = results
    assert too_long.failure.code == "prompt_too_long" and "4097" in too_long.failure.message
    assert too_long.candidates == () and too_long.failure.raw == ()
    assert (too_long.selection.verdict, too_long.selection.source) == ("fail", NO_VOTE)
    assert all(tickets[0].per_image[0] not in user for users, _ in backend.calls for user in users)
    assert fine.failure is None and fine.selection.verdict == "pass"


def test_a_prompt_exactly_at_the_limit_is_sampled():
    (result,), _ = run([ticket(0)], [[PASS]], tokens={ticket(0).per_image[0]: 4096})
    assert result.failure is None


# --- vote ---------------------------------------------------------------------------------------


def test_invalid_candidates_do_not_vote():
    result = one([BROKEN, THIRD_STATE, PASS], grid_of(0.1, 0.2, 0.3))
    assert dict(result.selection.votes) == {"pass": 1, "fail": 0}
    assert (result.selection.verdict, result.selection.vote_strength) == ("pass", 1.0)
    assert result.failure is None


def test_majority_wins():
    result = one([PASS, FAIL, FAIL], grid_of(0.1, 0.2, 0.3))
    assert result.selection.verdict == "fail"
    assert result.selection.vote_strength == pytest.approx(2 / 3)


def test_a_tie_is_fail():
    result = one([PASS, FAIL], grid_of(0.1, 0.2))
    assert (result.selection.verdict, result.selection.vote_strength) == ("fail", 0.5)
    assert result.selection.reason == FAIL.split("Reason: ")[1]


def test_chosen_candidate_is_the_lowest_temperature_one_with_the_winning_verdict():
    # The coldest sampler says fail, but pass wins: the coldest pass (0.3) gives the Reason.
    result = one([passing("T0.7"), FAIL, passing("T0.3"), passing("T0.5")], grid_of(0.7, 0.1, 0.3, 0.5))
    chosen = result.selection.chosen
    assert (chosen.sampler.temperature, result.selection.reason) == (0.3, "T0.3")


def test_equal_temperatures_keep_grid_order():
    result = one([passing("first"), passing("second")], (SamplerConfig(0.3, seed=1), SamplerConfig(0.3, seed=2)))
    assert result.selection.reason == "first"


@pytest.mark.parametrize(
    ("answers", "strength", "low"),
    [
        ([PASS] * 4 + [FAIL], 0.8, False),
        ([PASS] * 3 + [FAIL], 0.75, True),
        ([PASS] * 4, 1.0, False),
    ],
)
def test_vote_strength_and_low_agreement_under_min_agreement(answers, strength, low):
    result = one(answers, grid_of(*(0.1 * (n + 1) for n in range(len(answers)))))
    assert result.selection.vote_strength == pytest.approx(strength)
    assert result.selection.low_agreement is low
    assert result.in_manual_review is low


def test_min_agreement_is_configurable():
    result = one([PASS] * 3 + [FAIL], grid_of(0.1, 0.2, 0.3, 0.4), min_agreement=0.7)
    assert result.selection.low_agreement is False


# --- guardrail ----------------------------------------------------------------------------------


def test_guardrail_overrides_a_pass_with_a_rewritten_reason():
    (result,), _ = run([ticket(0, BAD_SCREWS)], [[PASS, PASS]], grid_of(0.1, 0.2))
    selection = result.selection
    assert (selection.verdict, selection.source) == ("fail", "guardrail")
    assert selection.reason.startswith("Image1: BBU安装螺丝符合性=不符合")
    assert selection.vote_strength == 1.0 and selection.chosen.parsed.verdict == "pass"  # the model vote
    verdicts, _ = outcome_rows([result])
    (row,) = verdicts
    assert (row["verdict"], row["source"], row["reason"]) == ("fail", "guardrail", selection.reason)


def test_guardrail_judges_relevance_by_the_mission_rule_not_the_guidance():
    # A G0 rewritten to speak of shields only does not make the screw negative irrelevant.
    (result,), _ = run([ticket(0, BAD_SCREWS)], [[PASS]], guidance={"G0": SHIELD_G0})
    assert (result.selection.verdict, result.selection.source) == ("fail", "guardrail")
    # The same negative under the shield mission's rule is no reason to fail: the model's pass stands.
    shield = Ticket("QC-S::pass", "QC-S", "pass", "挡风板安装检查", (BAD_SCREWS,))
    (result,), _ = run([shield], [[PASS]])
    assert (result.selection.verdict, result.selection.source) == ("pass", "model")


def test_model_fail_keeps_its_own_reason_under_a_hard_hit():
    (result,), _ = run([ticket(0, BAD_SCREWS)], [[FAIL]])
    assert (result.selection.source, result.selection.reason) == ("model", FAIL.split("Reason: ")[1])


# --- no valid vote and hard failures ------------------------------------------------------------


def test_no_valid_vote_is_fail_and_a_format_error_failure_with_the_raw_texts():
    result = one([BROKEN, "Verdict 通过\nReason: x"], grid_of(0.1, 0.2))
    selection = result.selection
    assert (selection.verdict, selection.source, selection.reason) == ("fail", NO_VOTE, NO_VOTE_REASON)
    assert selection.chosen is None and selection.vote_strength == 0.0
    assert result.failure.code == "format_error"
    assert result.failure.raw == (BROKEN, "Verdict 通过\nReason: x")
    assert "line_count×1" in result.failure.message and "missing_colon×1" in result.failure.message
    assert result.in_manual_review


def test_well_formed_answers_without_a_usable_verdict_are_no_valid_candidates():
    result = one([BROKEN, THIRD_STATE], grid_of(0.1, 0.2))
    assert result.failure.code == "no_valid_candidates"
    assert "third_state×1" in result.failure.message


def test_no_valid_vote_with_a_relevant_hard_hit_takes_the_guardrail_reason():
    (result,), _ = run([ticket(0, BAD_SCREWS)], [[BROKEN]])
    assert (result.selection.verdict, result.selection.source) == ("fail", "guardrail")
    assert result.failure.code == "format_error"  # still no model vote: a hard failure


def test_select_without_candidates_and_its_failure_code():
    selection = select((), 0.8)
    assert (selection.verdict, selection.source, dict(selection.votes)) == ("fail", NO_VOTE, {"pass": 0, "fail": 0})
    assert hard_failure(()).code == "no_candidates"
    assert hard_failure([Candidate.from_output(0, ONE[0], 0, PASS)]) is None


def test_select_applies_the_guardrail_it_is_given():
    candidates = [Candidate.from_output(0, ONE[0], 0, PASS)]
    assert select(candidates, 0.8).verdict == "pass"
    guarded = select(candidates, 0.8, scan([BAD_SCREWS], MissionRule.of(MISSION, MISSIONS[MISSION])))
    assert (guarded.verdict, guarded.source) == ("fail", "guardrail")


def test_a_backend_error_fails_only_its_ticket_and_is_recorded():
    tickets = [ticket(0), ticket(1), ticket(2)]
    down = BackendError("oom", "CUDA out of memory")
    script = [[down, down], [PASS, PASS], [down, PASS]]
    results, _ = run(tickets, script, grid_of(0.1, 0.2))
    failed, fine, partial = results
    assert failed.failure.code == "backend_error" and "CUDA out of memory [oom]" in failed.failure.message
    assert failed.failure.raw == ()
    assert fine.failure is None and fine.selection.verdict == "pass"
    assert partial.failure is None and dict(partial.selection.votes) == {"pass": 1, "fail": 0}
    rows = trajectory_rows(partial, epoch=1)
    assert (rows[0]["raw"], rows[0]["error"], rows[0]["detail"]) == (None, "backend_error", "CUDA out of memory [oom]")
    assert rows[1]["raw"] == PASS and "detail" not in rows[1]


def test_backend_errors_and_broken_texts_classify_by_the_texts_that_came_back():
    result = one([BackendError("timeout", "no answer"), BROKEN], grid_of(0.1, 0.2))
    assert result.failure.code == "format_error" and result.failure.raw == (BROKEN,)


def test_a_backend_answering_the_wrong_number_of_prompts_is_an_error():
    class Short(ScriptedBackend):
        def chat(self, prompts, sampling):
            return []

    backend = Short({ticket(0).per_image[0]: [PASS]})
    with pytest.raises(VlqcError, match="answered 0 of 1"):
        rollout([ticket(0)], None, MISSIONS, backend, ONE, 1, 4096, **BATCHING)


# --- outcome and rows ---------------------------------------------------------------------------


def test_every_ticket_ends_in_verdicts_or_failures_and_rows_match_their_schemas():
    tickets = [ticket(n) for n in range(5)]
    script = [[PASS, FAIL], [BROKEN, BROKEN], [BackendError("oom", "x")] * 2, [THIRD_STATE, FAIL], [PASS, PASS]]
    tokens = {tickets[4].per_image[0]: 5000}
    results, _ = run(tickets, script, grid_of(0.1, 0.2), tokens=tokens)
    verdicts, failures = outcome_rows(results)
    assert [row["ticket_key"] for row in verdicts] == [tickets[0].ticket_key, tickets[3].ticket_key]
    assert [(row["ticket_key"], row["code"]) for row in failures] == [
        (tickets[1].ticket_key, "format_error"),
        (tickets[2].ticket_key, "backend_error"),
        (tickets[4].ticket_key, "prompt_too_long"),
    ]
    for row in verdicts:
        validate(row, VERDICT_SCHEMA)
    for row in failures:
        validate(row, FAILURE_SCHEMA)
    for result in results:
        validate(selection_row(result, epoch=1), SELECTION_SCHEMA)
        for row in trajectory_rows(result, epoch=1):
            validate(row, TRAJECTORY_SCHEMA)
    assert selection_row(results[1], epoch=1)["failure"] == "format_error"


def test_rollout_of_no_tickets_is_empty():
    assert rollout([], None, MISSIONS, ScriptedBackend({}), ONE, 1, 4096, **BATCHING) == []


def test_tickets_of_several_missions_are_refused():
    other = Ticket("g::pass", "g", "pass", "挡风板安装检查", ("BBU设备×1",))
    with pytest.raises(VlqcError, match="one mission"):
        rollout([ticket(0), other], None, MISSIONS, ScriptedBackend({}), ONE, 1, 4096, **BATCHING)


@pytest.mark.parametrize("kwargs", [{"samples_per_decode": 0}, {"max_prompt_tokens": 0}, {"grid": ()}])
def test_rollout_arguments_are_checked(kwargs):
    args = {"grid": ONE, "samples_per_decode": 1, "max_prompt_tokens": 4096, **kwargs}
    with pytest.raises(VlqcError):
        rollout([ticket(0)], None, MISSIONS, ScriptedBackend({}), **args, **BATCHING)


# --- sampler grid -------------------------------------------------------------------------------


def test_sampler_grid_from_config_entries():
    grid = sampler_grid([{"temperature": 0.3, "seed": 7}, {"temperature": 0.5, "top_p": 0.9}])
    assert grid == (SamplerConfig(0.3, seed=7), SamplerConfig(0.5, top_p=0.9))
    assert grid[0].sampling(2) == Sampling(max_new_tokens=256, temperature=0.3, top_p=1.0, seed=9)


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([{"temperature": 0.3, "stop": ["\n"]}], "unknown keys"),
        ([{"top_p": 0.9}], "no temperature"),
        ([{"temperature": 0.3}, {"temperature": 0.3}], "repeats"),
        ([], "at least one"),
        ([{"temperature": -1}], "temperature must be >= 0"),
        ([{"temperature": 0.3, "top_p": 0}], "top_p"),
    ],
)
def test_bad_sampler_grids_are_refused(entries, match):
    with pytest.raises(VlqcError, match=match):
        sampler_grid(entries)
