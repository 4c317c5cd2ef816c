"""Stage-B runs end to end with a scripted backend: modes, reflection, gate, review queue, artifacts.

The backend judges each ticket by a policy of the verdict prompt (which rules it shows) and answers the
reflection passes from scripts, so each test decides which guidance change would help and checks what the
run made of it.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from conftest import REPO
from workflow_env import BIN, copy_workflow

from vlqc.errors import VlqcError
from vlqc.inference.prompts import VERDICT_SYSTEM
from vlqc.jsonl import read_json, read_jsonl
from vlqc.manifest import write_manifest
from vlqc.missions import load_missions
from vlqc.stage_b.engine import (
    JSONL_SCHEMAS,
    MANIFEST_OUTPUTS,
    OUTPUT_FILES,
    Settings,
    backend_config,
    config_keys,
    run_stage_b,
    stage_b_config,
)
from vlqc.stage_b.gate import Thresholds
from vlqc.stage_b.reflect_loop import ReflectionSettings
from vlqc.stage_b.reflection import DECISION_SYSTEM
from vlqc.stage_b.rollout import SamplerConfig, sampler_grid

MISSIONS = load_missions(REPO / "config" / "missions.yaml")
MISSION = "挡风板安装检查"
G0 = MISSIONS[MISSION]["focus"]
G1 = "若所有BBU均为免装且无方向错误，则判通过。"
S1 = "无关图片不计入任何证据，既不支持通过也不支持不通过。"
FIX = "挡风板缺少固定螺丝时判不通过。"  # the rule that judges the problem tickets right
HARM = "只要看到挡风板就判不通过。"  # a rule that breaks pass tickets
LABELS = ["fail"] * 5 + ["pass"] * 5
PROBLEM = {0, 1}  # fail tickets the model passes unless FIX is shown
HARMED = {5, 6}  # pass tickets the model fails when HARM is shown
# Changing 2 of 10 verdicts must be allowed for a fix to pass; the rest are the origin's thresholds.
GATE = Thresholds(max_changed_fraction=0.25)
TICKET_NO = re.compile(r"工单([0-9]+)")
PROMPT_KEY = re.compile(r"^--- ticket_key: (\S+)$", re.M)
PASS = "Verdict: 通过\nReason: Image1: 挡风板齐全; 总结: 任务要求均满足"
FAIL = "Verdict: 不通过\nReason: Image1: 挡风板有问题; 总结: 存在与任务相关的问题"


def key(n: int) -> str:
    return f"QC-{n:02d}::{LABELS[n]}"


def summary(n: int) -> str:
    return f"BBU设备×1，挡风板×1，工单{n:02d}"


def record(n: int, label: str | None = None, mission: str = MISSION) -> dict:
    return {
        "group_id": f"QC-{n:02d}",
        "mission": mission,
        "label": label or LABELS[n],
        "images": ["a.jpg"],
        "per_image": {"image_1": summary(n)},
    }


def write_stage_a(path: Path, records: Sequence[dict] | None = None, extra_lines: Sequence[str] = ()) -> Path:
    records = records if records is not None else [record(n) for n in range(len(LABELS))]
    lines = [json.dumps(r, ensure_ascii=False) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_seed(path: Path, rules: dict[str, str] | None = None, metadata: dict | None = None) -> Path:
    experiences = {"G0": G0, "G1": G1, "S1": S1, **(rules or {})}
    section = {
        "step": 0,
        "updated_at": "2026-01-01T00:00:00+00:00",
        "experiences": experiences,
        "metadata": metadata or {},
    }
    path.write_text(json.dumps({MISSION: section}, ensure_ascii=False), encoding="utf-8")
    return path


def default_policy(n: int, user: str) -> str:
    """The labels, except that PROBLEM tickets pass without FIX and HARMED tickets fail under HARM."""
    if n in PROBLEM and FIX not in user:
        return "pass"
    if n in HARMED and HARM in user:
        return "fail"
    return LABELS[n]


Script = str | Callable[[list[str]], str]


class ScriptedBackend:
    """Verdict prompts: `policy(ticket number, user text)` → pass, fail or a raw answer. Decision and ops
    prompts: the next item of their script, a text or a function of the prompt's ticket keys; an empty
    script answers "no evidence for none" and "nothing to change" respectively."""

    def __init__(
        self,
        policy=default_policy,
        decisions: Sequence[Script] = (),
        ops: Sequence[Script] = (),
        tokens: dict[int, int] | None = None,
    ):
        self.policy = policy
        self.scripts = {"decision": list(decisions), "ops": list(ops)}
        self.tokens = tokens or {}
        self.calls: dict[str, list[str]] = defaultdict(list)  # kind → user texts, in call order
        self.samplings: list = []

    @staticmethod
    def kind(system: str) -> str:
        return {VERDICT_SYSTEM: "verdict", DECISION_SYSTEM: "decision"}.get(system, "ops")

    def chat(self, prompts, sampling):
        self.samplings.append(sampling)
        return [self._answer(system, user) for system, user in prompts]

    def _answer(self, system: str, user: str) -> str:
        kind = self.kind(system)
        self.calls[kind].append(user)
        if kind == "verdict":
            verdict = self.policy(int(TICKET_NO.search(user).group(1)), user)
            return {"pass": PASS, "fail": FAIL}.get(verdict, verdict)
        script = self.scripts[kind]
        answer = script.pop(0) if script else (decision() if kind == "decision" else ops())
        return answer(PROMPT_KEY.findall(user)) if callable(answer) else answer

    def count_tokens(self, system: str, user: str) -> int:
        if self.kind(system) == "verdict":
            return self.tokens.get(int(TICKET_NO.search(user).group(1)), 100)
        return 100


def decision(no_evidence: Sequence[str] = (), analysis: str = "") -> str:
    return json.dumps({"no_evidence_group_ids": list(no_evidence), "decision_analysis": analysis}, ensure_ascii=False)


def ops(operations: Sequence[dict] = (), hypotheses: Sequence[dict] = ()) -> str:
    return json.dumps(
        {
            "has_evidence": bool(operations or hypotheses),
            "evidence_analysis": "",
            "operations": list(operations),
            "hypotheses": list(hypotheses),
        },
        ensure_ascii=False,
    )


def citing(**op) -> Callable[[list[str]], str]:
    """An ops answer with one operation whose evidence is every ticket of the prompt."""
    return lambda keys: ops([{"rationale": "依据标签", **op, "evidence": keys}])


def settings(epochs: int = 1, retention: int = 10, gate: Thresholds = GATE, **reflection) -> Settings:
    return Settings(
        grid=(SamplerConfig(0.3),),
        logging_steps=4,
        epochs=epochs,
        snapshot_retention=retention,
        reflection=ReflectionSettings(**{"patience": 100, "gate": gate, **reflection}),
    )


class Run:
    """A run folder and the files a test reads from it."""

    def __init__(self, tmp_path: Path, seed: Path | None = None, stage_a: Path | None = None, name: str = "run"):
        self.dir = tmp_path / name
        self.seed = seed or write_seed(tmp_path / "seed.json")
        self.stage_a = stage_a or write_stage_a(tmp_path / "stage_a.jsonl")

    def __call__(self, backend: ScriptedBackend, mode: str = "train", **kwargs) -> dict:
        return run_stage_b(self.stage_a, MISSION, MISSIONS, self.seed, self.dir, backend, settings(**kwargs), mode)

    def rows(self, name: str) -> list[dict]:
        return list(read_jsonl(self.dir / name, schema=JSONL_SCHEMAS.get(name)))

    def changes(self) -> list[dict]:
        return [row for row in self.rows("reflection.jsonl") if row["event"] == "change"]

    def cycles(self) -> list[dict]:
        return [row for row in self.rows("reflection.jsonl") if row["event"] == "cycle"]

    def guidance(self) -> dict:
        return read_json(self.dir / "guidance.json", schema="stage_b_guidance")[MISSION]

    def verdicts(self) -> dict[str, str]:
        return {row["ticket_key"]: row["verdict"] for row in self.rows("verdicts.jsonl")}

    def snapshots(self) -> list[Path]:
        return sorted((self.dir / "snapshots").glob("guidance-*.json"), key=lambda path: int(path.stem[9:]))


@pytest.fixture
def run(tmp_path) -> Run:
    return Run(tmp_path)


# --- each op, end to end ------------------------------------------------------------------------


def test_an_add_that_fixes_errors_passes_the_gate_and_becomes_the_next_rule(run):
    summary = run(ScriptedBackend(ops=[citing(op="add", text=FIX, rationale="缺螺丝")]))
    guidance = run.guidance()
    assert guidance["experiences"]["G2"] == FIX and guidance["step"] == 1
    meta = guidance["metadata"]["G2"]
    assert meta["reflection_id"] == "epoch1-cycle1" and meta["rationale"] == "缺螺丝"
    assert meta["sources"] == [key(0), key(1), "QC-00", "QC-01"]  # evidence, then the batch's group ids
    (change,) = run.changes()
    assert (change["origin"], change["outcome"]) == ("reflection", "accepted")
    assert (change["action"], change["key"]) == ("add", "G2")
    assert change["gate"]["numbers"]["err0"] == 0.2 and change["gate"]["numbers"]["err1"] == 0.0
    # The verdicts are those of the final guidance: both false passes fixed.
    assert run.verdicts() == {key(n): LABELS[n] for n in range(10)}
    assert summary["final"]["fp"] == 0 and summary["guidance_step"] == 1


def test_an_update_rewrites_the_rule_it_names(run):
    run(ScriptedBackend(ops=[citing(op="update", key="G1", text=FIX)]))
    assert run.guidance()["experiences"]["G1"] == FIX
    assert run.changes()[0]["action"] == "update" and run.changes()[0]["outcome"] == "accepted"


def test_a_delete_of_a_harmful_rule_passes_the_gate(tmp_path):
    run = Run(tmp_path, seed=write_seed(tmp_path / "seed.json", {"G2": HARM}))
    run(ScriptedBackend(decisions=[decision()], ops=[citing(op="delete", key="G2")]))
    assert "G2" not in run.guidance()["experiences"]
    (change,) = run.changes()
    assert (change["action"], change["outcome"]) == ("delete", "accepted")
    assert change["gate"]["numbers"]["false_pass_rise"] <= 0  # the guard of deletes was checked
    assert run.verdicts()[key(5)] == "pass"


def test_a_merge_folds_the_merged_rules_into_its_target(tmp_path):
    run = Run(tmp_path, seed=write_seed(tmp_path / "seed.json", {"G2": HARM}))
    # It fixes 4 tickets at once, so the gate must allow 4 changed verdicts in 10.
    run(
        ScriptedBackend(ops=[citing(op="merge", key="G1", text=FIX, merged_from=["G2"])]),
        gate=Thresholds(max_changed_fraction=0.4),
    )
    experiences = run.guidance()["experiences"]
    assert experiences["G1"] == FIX and "G2" not in experiences
    assert run.changes()[0]["action"] == "merge" and run.changes()[0]["outcome"] == "accepted"


def test_an_add_similar_to_an_existing_rule_updates_it(run):
    similar = G1.replace("免装", "免装的")  # ≥ 0.9 similar: an add that restates G1
    policy = lambda n, user: LABELS[n] if similar in user else default_policy(n, user)  # noqa: E731
    run(ScriptedBackend(policy, ops=[citing(op="add", text=similar)]))
    guidance = run.guidance()
    assert guidance["experiences"]["G1"] == similar and "G2" not in guidance["experiences"]
    (change,) = run.changes()
    assert (change["op"]["op"], change["action"], change["key"]) == ("add", "update", "G1")


# --- protection and refusals --------------------------------------------------------------------


def test_structural_rules_and_g0_cannot_be_touched(run):
    answer = lambda keys: ops(  # noqa: E731
        [
            {"op": "update", "key": "S1", "text": FIX, "rationale": "", "evidence": keys},
            {"op": "delete", "key": "G0", "rationale": "", "evidence": keys},
            {"op": "merge", "key": "G1", "text": FIX, "rationale": "", "merged_from": ["G0"], "evidence": keys},
            {"op": "add", "text": "出现需复核的情况就判不通过。", "rationale": "", "evidence": keys},
        ]
    )
    run(ScriptedBackend(ops=[answer]))
    guidance = run.guidance()
    assert guidance["experiences"] == {"G0": G0, "G1": G1, "S1": S1} and guidance["step"] == 0
    assert [(c["outcome"], c["reason"]) for c in run.changes()] == [
        ("refused", "g0_protected"),
        ("refused", "g0_protected"),
        ("refused", "forbidden_phrase"),
    ]
    # The S1 update never became an operation: the parser drops keys that are not G<n>.
    cycle = run.cycles()[0]
    assert cycle["dropped"][0]["what"] == "operations[0]" and "G<n>" in cycle["dropped"][0]["why"]


def test_the_gate_rejects_a_change_that_adds_errors_and_logs_its_numbers(run):
    run(ScriptedBackend(ops=[citing(op="add", text=HARM)]))
    assert "G2" not in run.guidance()["experiences"] and run.guidance()["step"] == 0
    change = run.changes()[0]
    assert change["outcome"] == "rejected" and not change["gate"]["accepted"]
    numbers = change["gate"]["numbers"]
    assert (numbers["err0"], numbers["err1"], numbers["rer"]) == (0.2, 0.4, -1.0)
    assert "rer -1.0000 < min_rer 0.1" in change["reason"]
    assert run.verdicts()[key(5)] == "pass"  # the verdicts are those of the guidance kept
    assert not run.snapshots()  # nothing was saved over the seed copy


def test_the_gate_rejects_a_change_of_too_many_verdicts(run):
    run(ScriptedBackend(ops=[citing(op="add", text=FIX)]), gate=Thresholds())  # max_changed_fraction 0.05
    change = run.changes()[0]
    assert change["outcome"] == "rejected" and change["gate"]["numbers"]["changed_fraction"] == 0.2
    assert "changed_fraction 0.2000 > max 0.05" in change["reason"]


def test_the_change_cap_stops_accepting_within_an_epoch(run):
    answer = lambda keys: ops(  # noqa: E731
        [
            {"op": "add", "text": FIX, "rationale": "", "evidence": keys},
            {"op": "update", "key": "G1", "text": "BBU免装且方向正确时判通过。", "rationale": "", "evidence": keys},
        ]
    )
    run(ScriptedBackend(ops=[answer]), change_cap_per_epoch=1)
    assert [c["outcome"] for c in run.changes()] == ["accepted", "capped"]
    assert run.changes()[1]["reason"] == "change_cap_per_epoch=1 reached"


# --- review queue, closure and budgets ------------------------------------------------------------


def test_tickets_without_evidence_go_to_the_review_queue_and_are_not_reflected_on_again(run):
    backend = ScriptedBackend(decisions=[decision([key(0)], "标签可疑")], ops=[citing(op="add", text=HARM)])
    run(backend, epochs=2, retry_budget_per_group_per_epoch=0)
    queue = {item["ticket_key"]: item for item in run.rows("need_review_queue.jsonl")}
    item = queue[key(0)]
    assert (item["reason_code"], item["reflection_id"], item["uncertainty_note"]) == (
        "reflection_no_evidence_after_gt",
        "epoch1-cycle1",
        "标签可疑",
    )
    assert (item["gt_label"], item["pred_verdict"], item["epoch"]) == ("fail", "pass", 1)
    # Stop-gradient: epoch 2 reflects on ticket 1 alone.
    epoch2 = [c for c in run.cycles() if c["epoch"] == 2]
    assert epoch2 and all(c["ticket_keys"] == [key(1)] for c in epoch2)
    need_review = read_json(run.dir / "need_review.json", schema="stage_b_need_review")
    # Ticket 1 stays uncovered in epoch 2 and runs out of retries.
    assert queue[key(1)]["reason_code"] == "budget_exhausted" and queue[key(1)]["epoch"] == 2
    assert need_review == {
        "mission": MISSION,
        "n": 2,
        "items": list(queue.values()),
        "by_reason_code": {"reflection_no_evidence_after_gt": 1, "budget_exhausted": 1},
    }
    # Epoch 2 metrics leave the queued ticket out of the exclude block.
    epoch_end = [row for row in run.rows("metrics.jsonl") if row["event"] == "epoch_end"]
    assert [row["exclude_manual_review"]["n"] for row in epoch_end] == [10, 9]
    assert [row["include_manual_review"]["n"] for row in epoch_end] == [10, 10]


def test_uncovered_tickets_are_retried_at_halved_batch_size_then_budget_exhausted(tmp_path):
    labels_all_wrong = lambda n, user: "fail" if LABELS[n] == "pass" else LABELS[n]  # noqa: E731
    run = Run(tmp_path)
    backend = ScriptedBackend(labels_all_wrong)  # 5 mismatches, and every ops answer covers nothing
    run(backend, batch_size=4, retry_budget_per_group_per_epoch=2, max_calls_per_epoch=20)  # 10 cycles, 2 calls each
    sizes = [(c["attempt"], len(c["ticket_keys"])) for c in run.cycles()]
    assert sizes == [(0, 4), (0, 1), (1, 2), (1, 2), (1, 1), (2, 1), (2, 1), (2, 1), (2, 1), (2, 1)]
    queue = run.rows("need_review_queue.jsonl")
    assert sorted(item["ticket_key"] for item in queue) == [key(n) for n in range(5, 10)]
    assert {item["reason_code"] for item in queue} == {"budget_exhausted"}
    last_cycle = {c["ticket_keys"][0]: c["reflection_id"] for c in run.cycles() if c["attempt"] == 2}
    assert all(item["reflection_id"] == last_cycle[item["ticket_key"]] for item in queue)


def test_covered_tickets_are_not_retried(run):
    hypothesis = {"text": "挡风板缺螺丝则不通过", "falsifier": "螺丝齐全仍判通过", "evidence": [key(0)]}
    run(ScriptedBackend(ops=[ops(hypotheses=[hypothesis])]), retry_budget_per_group_per_epoch=1)
    first, retry = run.cycles()
    assert (first["covered"], first["uncovered"]) == ([key(0)], [key(1)])
    assert retry["ticket_keys"] == [key(1)] and retry["attempt"] == 1
    assert [item["ticket_key"] for item in run.rows("need_review_queue.jsonl")] == [key(1)]


def test_max_calls_per_epoch_sends_the_waiting_tickets_to_the_queue_without_a_reflection_id(tmp_path):
    labels_all_wrong = lambda n, user: "fail" if LABELS[n] == "pass" else LABELS[n]  # noqa: E731
    run = Run(tmp_path)
    backend = ScriptedBackend(labels_all_wrong)
    run(backend, batch_size=2, max_calls_per_epoch=3)  # decision + ops of batch 1, decision of batch 2
    assert len(backend.calls["decision"]) + len(backend.calls["ops"]) == 3
    queue = {item["ticket_key"]: item for item in run.rows("need_review_queue.jsonl")}
    assert sorted(queue) == [key(n) for n in range(5, 10)]
    assert all(item["reason_code"] == "budget_exhausted" for item in queue.values())
    assert [queue[key(n)]["reflection_id"] for n in (5, 6)] == [None, None]  # ran out before their retry
    assert run.cycles()[-1]["status"] == "out_of_calls"


def test_a_malformed_answer_is_retried_a_bounded_number_of_times_then_recorded(run):
    backend = ScriptedBackend(decisions=["不是JSON", '{"no_evidence_group_ids": []}', "```json\n[1]\n```"])
    run(backend, format_retries=2, retry_budget_per_group_per_epoch=0)
    assert len(backend.calls["decision"]) == 3 and not backend.calls["ops"]
    (failure,) = [row for row in run.rows("failure_malformed.jsonl") if row["code"].startswith("reflection")]
    assert (failure["code"], failure["pass"], failure["ticket_keys"]) == (
        "reflection_format_error",
        "decision",
        [key(0), key(1)],
    )
    assert failure["raw"] == ["不是JSON", '{"no_evidence_group_ids": []}', "```json\n[1]\n```"]
    assert "[not_json]" in failure["message"] and "[missing_fields]" in failure["message"]
    assert run.cycles()[0]["status"] == "decision_failed"
    # Retries sample anew: seed + attempt.
    assert [s.seed for s in backend.samplings if s.max_new_tokens == 512] == [0, 1, 2]
    # The tickets still end in verdicts: a reflection failure is not a ticket failure.
    assert set(run.verdicts()) == {key(n) for n in range(10)}


def test_a_malformed_answer_then_a_good_one_goes_on(run):
    backend = ScriptedBackend(decisions=["oops", decision()], ops=["{}", citing(op="add", text=FIX)])
    run(backend)
    assert not [row for row in run.rows("failure_malformed.jsonl") if row["code"].startswith("reflection")]
    assert run.guidance()["experiences"]["G2"] == FIX


def test_a_reflection_prompt_over_the_limit_is_not_sent(run):
    backend = ScriptedBackend()
    backend.count_tokens = lambda system, user: 5000 if system == DECISION_SYSTEM else 100
    run(backend, retry_budget_per_group_per_epoch=0)
    assert not backend.calls["decision"]
    (failure,) = run.rows("failure_malformed.jsonl")
    assert failure["code"] == "reflection_prompt_too_long" and failure["raw"] == []


def test_reflection_stops_after_patience_cycles_without_a_change(tmp_path):
    labels_all_wrong = lambda n, user: "fail" if LABELS[n] == "pass" else LABELS[n]  # noqa: E731
    run = Run(tmp_path)
    run(ScriptedBackend(labels_all_wrong), batch_size=1, patience=2)
    assert len(run.cycles()) == 2
    assert not run.rows("need_review_queue.jsonl")  # stopping is not evidence against the labels


# --- hypotheses ---------------------------------------------------------------------------------


def hypothesis_answer(text: str) -> Callable[[list[str]], str]:
    return lambda keys: ops(hypotheses=[{"text": text, "falsifier": "螺丝齐全", "evidence": keys}])


def test_a_hypothesis_supported_in_enough_cycles_is_promoted_through_the_gate(run):
    text = FIX.removesuffix("。")  # a hypothesis ends in its verdict
    backend = ScriptedBackend(
        policy=lambda n, user: LABELS[n] if text in user else default_policy(n, user),
        ops=[hypothesis_answer(text), hypothesis_answer(text)],
    )
    run(backend, epochs=2, promote_min_cycles=2, promote_min_tickets=2)
    assert run.guidance()["experiences"]["G2"] == text
    (change,) = run.changes()
    assert (change["origin"], change["op"]["op"], change["outcome"]) == ("promotion", "add", "accepted")
    assert change["op"]["evidence"] == [key(0), key(1)]
    (entry,) = read_json(run.dir / "hypotheses.json", schema="stage_b_hypotheses")["hypotheses"]
    assert (entry["status"], entry["cycles"]) == ("promoted", [1, 2])
    events = [row["event"] for row in run.rows("hypothesis_events.jsonl")]
    assert events == ["observed", "observed", "promoted"]


def test_a_hypothesis_the_gate_rejects_is_marked_rejected(run):
    text = HARM.removesuffix("。")
    policy = lambda n, user: "fail" if n in HARMED and text in user else default_policy(n, user)  # noqa: E731
    backend = ScriptedBackend(policy, ops=[hypothesis_answer(text), hypothesis_answer(text)])
    run(backend, epochs=2, promote_min_cycles=2, promote_min_tickets=2)
    (entry,) = read_json(run.dir / "hypotheses.json")["hypotheses"]
    assert entry["status"] == "rejected"
    rejected = run.rows("hypothesis_events.jsonl")[-1]
    assert rejected["event"] == "rejected" and "rer" in rejected["reason"]


def test_a_hypothesis_without_enough_support_stays_open(run):
    run(ScriptedBackend(ops=[hypothesis_answer("挡风板缺螺丝则不通过")]), promote_min_cycles=2, promote_min_tickets=2)
    (entry,) = read_json(run.dir / "hypotheses.json")["hypotheses"]
    assert entry["status"] == "open" and not run.changes()


# --- rule lifecycle -----------------------------------------------------------------------------


def failing_rule_metadata(misses: int) -> dict:
    return {
        "G2": {
            "updated_at": "2026-01-01T00:00:00+00:00",
            "reflection_id": "epoch1-cycle1",
            "sources": [key(0), key(1), "QC-00"],
            "hit_count": 1,
            "miss_count": misses,
            "confidence": 0.5,
        }
    }


def test_rules_get_a_hit_or_miss_per_source_ticket_and_failing_ones_are_pruned(tmp_path):
    seed = write_seed(tmp_path / "seed.json", {"G2": "BBU需挡风板时判不通过。"}, failing_rule_metadata(misses=1))
    run = Run(tmp_path, seed=seed)
    run(ScriptedBackend(), retry_budget_per_group_per_epoch=0)
    # Tickets 0 and 1 are still wrong: two misses, 3 in all at confidence 0.25 → pruned, as it harms nothing.
    assert "G2" not in run.guidance()["experiences"]
    (change,) = run.changes()
    assert (change["origin"], change["action"], change["outcome"]) == ("prune", "delete", "accepted")
    assert change["gate"]["numbers"]["rer"] == 0.0


def test_a_prune_that_would_add_errors_is_refused_by_the_gate(tmp_path):
    rule = "BBU需挡风板时判不通过。"
    seed = write_seed(tmp_path / "seed.json", {"G2": rule}, failing_rule_metadata(misses=1))
    policy = lambda n, user: "pass" if n == 2 and rule not in user else default_policy(n, user)  # noqa: E731
    run = Run(tmp_path, seed=seed)
    run(ScriptedBackend(policy), retry_budget_per_group_per_epoch=0)
    meta = run.guidance()["metadata"]["G2"]
    assert (meta["hit_count"], meta["miss_count"]) == (1, 3)
    assert run.changes()[0]["outcome"] == "rejected"


# --- guidance files -----------------------------------------------------------------------------


def test_snapshots_number_the_versions_a_run_replaced_and_keep_the_newest(tmp_path):
    # A seed rule learned from ticket 2, judged right every epoch: a hit and a save per epoch.
    learned = {"updated_at": "2026-01-01T00:00:00+00:00", "reflection_id": "seed", "sources": [key(2)]}
    seed = write_seed(tmp_path / "seed.json", {"G2": "BBU需挡风板时判不通过。"}, {"G2": learned})
    run = Run(tmp_path, seed=seed)
    run(ScriptedBackend(lambda n, user: LABELS[n]), epochs=3, retention=2)
    assert [path.name for path in run.snapshots()] == ["guidance-2.json", "guidance-3.json"]
    hits = [read_json(path)[MISSION]["metadata"]["G2"]["hit_count"] for path in run.snapshots()]
    assert hits == [1, 2] and run.guidance()["metadata"]["G2"]["hit_count"] == 3  # guidance-1: the seed copy


def test_a_run_refuses_a_folder_holding_an_earlier_runs_files(run):
    run(ScriptedBackend(ops=[citing(op="add", text=FIX)]))
    again = ScriptedBackend()
    with pytest.raises(
        VlqcError, match=r"run holds verdicts\.jsonl, .*guidance\.json, hypotheses\.json, snapshots of an"
    ):
        run(again)
    with pytest.raises(VlqcError, match="of an earlier run"):
        run(again, mode="eval")
    assert not again.calls  # refused before judging anything
    assert run.guidance()["experiences"]["G2"] == FIX  # and nothing of the earlier run was touched


def test_the_run_manifest_is_written_into_a_fresh_folder_and_counts_as_an_earlier_run(run, tmp_path):
    def manifest(run_dir: Path) -> None:
        assert not (run_dir / "verdicts.jsonl").exists(), "written before the run's own files"
        write_manifest(run_dir, {"mode": "eval"}, [run.seed], extra={"job": "stage_b"})

    run_stage_b(run.stage_a, MISSION, MISSIONS, run.seed, run.dir, ScriptedBackend(), settings(), "eval", manifest)
    assert read_json(run.dir / "run_metadata.json", schema="run_metadata")["job"] == "stage_b"
    assert [path.name for path in (run.dir / "sources").iterdir()] == [f"00-{run.seed.name}"]
    assert all((run.dir / name).exists() for name in MANIFEST_OUTPUTS)
    # A folder holding only another run's manifest is refused too.
    fresh = Run(tmp_path, seed=run.seed, stage_a=run.stage_a, name="other")
    write_manifest(fresh.dir, {}, [])
    with pytest.raises(VlqcError, match=r"other holds resolved_config\.json, runtime_env\.json, run_metadata\.json"):
        fresh(ScriptedBackend(), mode="eval")


def comparable(run: Run) -> dict[str, bytes | list]:
    """Every file of a run folder by its path in the folder; metrics rows without their timing fields."""
    files = {}
    for path in sorted(run.dir.rglob("*")):
        if path.is_file():
            files[str(path.relative_to(run.dir))] = path.read_bytes()
    timing = ("elapsed_seconds", "groups_per_second", "eta_seconds")
    files["metrics.jsonl"] = [{k: v for k, v in row.items() if k not in timing} for row in run.rows("metrics.jsonl")]
    return files


def test_the_same_inputs_give_the_same_files(tmp_path):
    first, second = Run(tmp_path, name="first"), Run(tmp_path, name="second")
    for run in (first, second):  # an accepted change, a snapshot and a review-queue entry in each
        run(ScriptedBackend(decisions=[decision([key(1)])], ops=[citing(op="add", text=FIX)]), epochs=2)
    assert first.snapshots() and first.rows("need_review_queue.jsonl")
    assert comparable(first) == comparable(second)


def test_a_new_run_from_an_earlier_runs_guidance_continues_learning(tmp_path):
    earlier = Run(tmp_path, name="earlier")
    earlier(ScriptedBackend(ops=[citing(op="add", text=FIX)]))
    later = Run(tmp_path, seed=earlier.dir / "guidance.json", name="later")
    backend = ScriptedBackend()
    summary = later(backend)
    assert all(FIX in user for user in backend.calls["verdict"])
    assert not backend.calls["decision"]  # nothing left to learn: every verdict is right
    # It starts from the earlier run's guidance as it was (its first snapshot, the copy replaced once
    # the rule's two source tickets scored hits), and goes on from there.
    assert read_json(later.snapshots()[0])[MISSION] == earlier.guidance()
    assert later.guidance()["experiences"] == earlier.guidance()["experiences"] and summary["guidance_step"] == 1
    hits = [run.guidance()["metadata"]["G2"]["hit_count"] for run in (earlier, later)]
    assert hits == [1, 3]
    assert read_json(later.dir / "hypotheses.json") == {"hypotheses": []}  # its own pool, from nothing


def test_eval_judges_once_with_the_given_guidance_frozen(run):
    backend = ScriptedBackend(ops=[citing(op="add", text=FIX)])
    summary = run(backend, mode="eval", epochs=3)
    assert not backend.calls["decision"] and not backend.calls["ops"]
    assert len(backend.calls["verdict"]) == 10 and not any(FIX in user for user in backend.calls["verdict"])
    assert run.guidance()["experiences"] == {"G0": G0, "G1": G1, "S1": S1}
    assert summary["final"]["fp"] == 2 and summary["final"]["fp_rate"] == 0.4
    assert not run.rows("reflection.jsonl") and not run.rows("need_review_queue.jsonl")
    assert {row["epoch"] for row in run.rows("selections.jsonl")} == {1}
    assert not (run.dir / "snapshots").exists()  # a train output only


def test_an_unknown_mode_is_refused(run):
    with pytest.raises(VlqcError, match="mode must be one of"):
        run(ScriptedBackend(), mode="test")


# --- every ticket accounted for, artifacts ------------------------------------------------------


def test_every_ticket_ends_in_verdicts_or_failure_malformed(tmp_path):
    records = [record(n) for n in range(10)] + [record(3)]  # a duplicate line
    extra = ["{not json", json.dumps(record(11, "pass", mission="BBU接地线检查"), ensure_ascii=False)]
    stage_a = write_stage_a(tmp_path / "stage_a.jsonl", records, extra)
    policy = lambda n, user: "两行都没有" if n == 7 else default_policy(n, user)  # noqa: E731
    run = Run(tmp_path, stage_a=stage_a)
    run(ScriptedBackend(policy, tokens={8: 5000}), retry_budget_per_group_per_epoch=0)
    failures = run.rows("failure_malformed.jsonl")
    rejects = [(row["line"], row["reason"]) for row in failures if row["code"] == "bad_stage_a_row"]
    assert rejects == [(11, "duplicate_ticket"), (12, "unreadable_line"), (13, "wrong_mission")]
    ticket_failures = {row["ticket_key"]: row["code"] for row in failures if "label" in row}
    assert ticket_failures == {key(7): "format_error", key(8): "prompt_too_long"}
    verdicts = run.verdicts()
    assert not set(verdicts) & set(ticket_failures)
    assert set(verdicts) | set(ticket_failures) == {key(n) for n in range(10)}
    # Hard failures never enter reflection or the review queue.
    reflected = {k for cycle in run.cycles() for k in cycle["ticket_keys"]}
    assert not reflected & set(ticket_failures)


def test_every_output_is_written_and_matches_its_schema(run):
    run(ScriptedBackend(ops=[citing(op="add", text=FIX)]))
    for name in OUTPUT_FILES:
        assert (run.dir / name).is_file(), name
    for name in JSONL_SCHEMAS:
        run.rows(name)  # validates every row
    read_json(run.dir / "need_review.json", schema="stage_b_need_review")
    read_json(run.dir / "hypotheses.json", schema="stage_b_hypotheses")
    # Nothing else: every file a run writes is an output (snapshots/ holds the seed copy the add replaced).
    written = {str(path.relative_to(run.dir)) for path in run.dir.rglob("*") if path.is_file()}
    assert written == {*OUTPUT_FILES, "snapshots/guidance-1.json"}


def test_metrics_rows_per_window_and_epoch_with_the_false_pass_rate(run):
    run(ScriptedBackend(), mode="eval")
    rows = run.rows("metrics.jsonl")
    assert [(r["event"], r["global_step"]) for r in rows] == [
        ("logging_steps", 4),
        ("logging_steps", 8),
        ("epoch_end", 10),
    ]
    end = rows[-1]
    assert end["false_pass_rate"] == 0.4 and end["include_manual_review"]["fp"] == 2
    assert rows[0]["include_manual_review"]["n"] == 4


def test_group_reports_show_the_tickets_their_epochs_reflections_and_review(run):
    backend = ScriptedBackend(decisions=[decision([key(0)])], ops=[citing(op="add", text=HARM)])
    run(backend, epochs=2, retry_budget_per_group_per_epoch=0)
    delta = run.rows("group_report_delta.jsonl")
    assert [row["ticket_key"] for row in delta] == [key(8), key(9)]  # the last window only
    assert all(row["epoch"] == 2 and row["global_step"] == 20 for row in delta)
    report = {row["ticket_key"]: row for row in run.rows("group_report.jsonl")}
    assert list(report) == [key(n) for n in range(10)]
    first = report[key(0)]
    assert first["epochs"] == [{"epoch": 1, "verdict": "pass"}, {"epoch": 2, "verdict": "pass"}]
    assert first["review"] == {
        "reason_code": "reflection_no_evidence_after_gt",
        "epoch": 1,
        "reflection_id": "epoch1-cycle1",
    }
    assert first["reflections"] == ["epoch1-cycle1"]
    assert report[key(1)]["reflections"] == ["epoch1-cycle1", "epoch2-cycle2"]
    assert report[key(5)]["review"] is None and report[key(5)]["candidates"][0]["verdict"] == "pass"


def test_the_false_pass_rate_is_logged_with_a_warning_over_target(run, caplog):
    caplog.set_level("INFO")
    run(ScriptedBackend(), mode="eval")
    (line,) = [r for r in caplog.records if "FALSE PASS" in r.getMessage()]
    assert line.levelname == "WARNING" and "rate 40.0%" in line.getMessage()


# --- config -------------------------------------------------------------------------------------


def test_settings_from_the_config_section_pick_the_mode_grid():
    section = stage_b_config({"eval_grid": [{"temperature": 0.2}], "gate": {"patience": 5}})
    assert [s.temperature for s in Settings.from_config(section, "eval").grid] == [0.2]
    train = Settings.from_config(section, "train")
    assert [s.temperature for s in train.grid] == [0.3, 0.5, 0.7]
    assert train.reflection.patience == 5 and train.reflection.gate == Thresholds()
    assert train.reflection.max_prompt_tokens == 4096


def test_the_library_defaults_are_the_schema_defaults():
    # Settings, ReflectionSettings and Thresholds built without arguments are the stage_b section's defaults.
    section = stage_b_config({})
    assert Settings(grid=sampler_grid(section["train_grid"])) == Settings.from_config(section, "train")


class Recording(dict):
    """A config section that notes which of its keys are read."""

    def __init__(self, section):
        super().__init__(section)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


@pytest.mark.parametrize("backend", ["hf", "openai"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_run_reads_exactly_its_config_keys(backend, mode):
    # What the rule passes as --settings: a key left out would silently take its default in the job.
    section = Recording(stage_b_config({"backend": backend}))
    Settings.from_config(section, mode)
    backend_config(section, "ckpt")
    assert section.read == set(config_keys(section, mode))
    assert ("epochs" in section.read, "openai" in section.read) == (mode == "train", backend == "openai")


def test_an_eval_run_keeps_the_defaults_of_the_train_settings():
    section = stage_b_config({"epochs": 3, "reflection": {"batch_size": 2}, "gate": {"min_rer": 0.5}})
    assert Settings.from_config(section, "eval") == Settings.from_config(stage_b_config({}), "eval")
    train = Settings.from_config(section, "train")
    assert (train.epochs, train.reflection.batch_size, train.reflection.gate.min_rer) == (3, 2, 0.5)


def test_the_config_section_is_checked_by_dotted_path():
    with pytest.raises(VlqcError, match="stage_b.reflection.batch: unknown key"):
        stage_b_config({"reflection": {"batch": 2}})


def test_backend_config_for_each_backend():
    hf = backend_config(stage_b_config({"gpus": 2}), "ckpt", local_rank=1)
    assert hf == {
        "backend": "hf",
        "checkpoint": "ckpt",
        "device": "cuda:1",
        "dtype": "bfloat16",
        "batch_size": 8,
        "base": None,
        "attn_implementation": "sdpa",
    }
    assert backend_config(stage_b_config({}), "ckpt", base="base")["base"] == "base"
    assert backend_config(stage_b_config({"cpu_ranks": 2}), "ckpt")["device"] == "cpu"
    openai = backend_config(stage_b_config({"backend": "openai", "openai": {"base_url": "http://h:1/v1"}}), "tok")
    assert openai["base_url"] == "http://h:1/v1" and openai["tokenizer_dir"] == "tok"


# --- workflow -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory) -> Path:
    """A clean copy of the workflow: the plan must not depend on what this checkout has built."""
    return copy_workflow(tmp_path_factory.mktemp("workflow"))


def dry_run(workdir: Path, target: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "snakemake"), "-n", target, *args], cwd=workdir, capture_output=True, text=True)


def test_the_eval_target_plans_the_chain_from_the_demo_tickets(workflow_copy):
    plan = dry_run(workflow_copy, f"results/stage_b/{MISSION}/eval/demo/verdicts.jsonl")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    for rule in ("demo_tickets", "train_sft", "stage_a_merge", "stage_b_eval"):
        assert re.search(rf"^(?:rule|checkpoint) {rule}:", plan.stdout, flags=re.M), rule  # train_sft: a checkpoint
    assert "stage_b_train" not in plan.stdout


def planned_guidance(plan: subprocess.CompletedProcess, rule: str) -> list[str]:
    """The guidance input of every `rule` job of a dry run, in plan order (the second input of both rules)."""
    assert plan.returncode == 0, plan.stdout + plan.stderr
    return [m[1].split(", ")[1] for m in re.finditer(rf"^rule {rule}:\n    input: (.*)$", plan.stdout, flags=re.M)]


def test_the_train_target_and_an_eval_with_trained_guidance(workflow_copy):
    plan = dry_run(workflow_copy, f"results/stage_b/{MISSION}/train/demo/verdicts.jsonl")
    assert planned_guidance(plan, "stage_b_train") == [f"config/stage_b/{MISSION}.json"]
    assert "stage_b_eval" not in plan.stdout
    guidance = "results/stage_b/{mission}/train/demo/guidance.json"
    plan = dry_run(
        workflow_copy,
        f"results/stage_b/{MISSION}/eval/new/verdicts.jsonl",
        "--config",
        f'stage_b={{"eval_guidance": "{guidance}"}}',
    )
    # The learned guidance is an output of the train run: the plan runs it first.
    assert planned_guidance(plan, "stage_b_train") == [f"config/stage_b/{MISSION}.json"]
    assert planned_guidance(plan, "stage_b_eval") == [guidance.format(mission=MISSION)]


def test_a_train_run_continues_from_an_earlier_run_that_runs_first(workflow_copy):
    chain = '{"more": "results/stage_b/{mission}/train/demo/guidance.json"}'
    target = f"results/stage_b/{MISSION}/train/more/verdicts.jsonl"
    plan = dry_run(workflow_copy, target, "--config", f'stage_b={{"train_guidance": {chain}}}')
    assert planned_guidance(plan, "stage_b_train") == [
        f"config/stage_b/{MISSION}.json",  # demo, from the seed
        f"results/stage_b/{MISSION}/train/demo/guidance.json",  # more, from what demo learned
    ]


@pytest.mark.parametrize(
    ("settings", "loop"),
    [
        (
            '{"train_guidance": {"demo": "results/stage_b/{mission}/train/demo/guidance.json"}}',
            "train/demo → train/demo",
        ),
        (
            '{"eval_guidance": "results/stage_b/{mission}/train/a/guidance.json", '
            '"train_guidance": {"a": "results/stage_b/{mission}/eval/demo/guidance.json"}}',
            "eval/demo → train/a → eval/demo",
        ),
    ],
)
def test_a_run_that_would_start_from_its_own_guidance_is_refused_naming_the_loop(workflow_copy, settings, loop):
    kind = loop.split("/")[0]
    plan = dry_run(
        workflow_copy, f"results/stage_b/{MISSION}/{kind}/demo/verdicts.jsonl", "--config", f"stage_b={settings}"
    )
    assert plan.returncode != 0
    assert f"Stage-B runs of {MISSION} that start from each other's guidance: {loop}" in plan.stdout + plan.stderr
    assert "CyclicGraphException" not in plan.stdout + plan.stderr
