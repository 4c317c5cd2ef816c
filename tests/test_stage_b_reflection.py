"""Reflection passes: strict parsing of decision and ops answers, closure, retry batches, prompts."""

import json

import pytest

from vlqc.errors import VlqcError
from vlqc.stage_b.reflection import (
    DECISION_ANALYSIS_MAX,
    EVIDENCE_ANALYSIS_MAX,
    FALSIFIER_MAX,
    RATIONALE_MAX,
    TEXT_MAX,
    Dropped,
    Hypothesis,
    ReflectionFormatError,
    closure,
    decision_prompt,
    ops_prompt,
    parse_decision,
    parse_ops,
    retry_batches,
)

BATCH = ("QC-A-1::fail", "QC-A-2::pass", "QC-A-3::fail")
RULE = "若BBU需要挡风板而未配备，则判不通过"
HYPOTHESIS = {
    "text": "若挡风板方向与BBU进风方向相反，则判不通过",
    "falsifier": "方向正确的工单被判不通过",
    "evidence": ["QC-A-1::fail"],
}


def dumps(doc) -> str:
    return json.dumps(doc, ensure_ascii=False)


def decision(**fields) -> str:
    return dumps({"no_evidence_group_ids": ["QC-A-2::pass"], "decision_analysis": "摘要与标签矛盾", **fields})


def ops(operations=(), hypotheses=(), **fields) -> str:
    """An ops answer; `operations` and `hypotheses` go into the JSON as given (tuples become lists)."""
    doc = {"has_evidence": True, "evidence_analysis": "挡风板方向", "operations": operations, "hypotheses": hypotheses}
    return dumps({**doc, **fields})


def update(key="G1", evidence=("QC-A-1::fail",), **fields) -> dict:
    return {"op": "update", "key": key, "text": RULE, "rationale": "补充挡风板配备", "evidence": evidence, **fields}


def add(**fields) -> dict:
    return {"op": "add", "text": RULE, "rationale": "新规则", "evidence": ["QC-A-3::fail"], **fields}


# --- decision pass --------------------------------------------------------------------------------


def test_decision_keeps_batch_ids_and_analysis():
    result = parse_decision(decision(), BATCH)
    assert result.no_evidence == ("QC-A-2::pass",)
    assert result.analysis == "摘要与标签矛盾"
    assert result.dropped == ()


@pytest.mark.parametrize("wrap", ["```json\n{}\n```", "```\n{}\n```", "  \n{}\n\t", "```JSON {} ```"])
def test_decision_accepts_a_fence_and_whitespace(wrap):
    result = parse_decision(wrap.replace("{}", decision()), BATCH)
    assert result.no_evidence == ("QC-A-2::pass",)


def test_decision_drops_unknown_ids_and_reports_them():
    text = decision(no_evidence_group_ids=["QC-A-9::pass", "QC-A-3::fail", "QC-A-3::fail", "QC-A-1::pass"])
    result = parse_decision(text, BATCH)
    assert result.no_evidence == ("QC-A-3::fail",)  # duplicate listed once
    assert [d.what for d in result.dropped] == ["QC-A-9::pass", "QC-A-1::pass"]
    assert all("not a ticket key" in d.why for d in result.dropped)


def test_decision_analysis_may_be_empty_and_up_to_the_limit():
    assert parse_decision(decision(decision_analysis=""), BATCH).analysis == ""
    assert len(parse_decision(decision(decision_analysis="析" * DECISION_ANALYSIS_MAX), BATCH).analysis) == 200


DECISION_ERRORS = [
    ("", "not_json"),
    ("好的，结果如下：" + decision(), "not_json"),  # text around the object
    (decision() + "\n以上。", "not_json"),
    ("```json\n" + decision(), "not_json"),  # unclosed fence
    (decision() + decision(), "not_json"),  # two objects
    ('["QC-A-2::pass"]', "not_object"),
    ('{"no_evidence_group_ids": [], "no_evidence_group_ids": [], "decision_analysis": ""}', "duplicate_field"),
    (decision(operations=[]), "extra_fields"),
    (decision(note="x"), "extra_fields"),
    (dumps({"no_evidence_group_ids": []}), "missing_fields"),
    (decision(no_evidence_group_ids="QC-A-2::pass"), "bad_field"),
    (decision(no_evidence_group_ids=[1]), "bad_field"),
    (decision(no_evidence_group_ids=[""]), "bad_field"),
    (decision(decision_analysis=None), "bad_field"),
    (decision(decision_analysis="析" * (DECISION_ANALYSIS_MAX + 1)), "bad_field"),
]


@pytest.mark.parametrize("text, code", DECISION_ERRORS)
def test_decision_contract_violations_invalidate_the_answer(text, code):
    with pytest.raises(ReflectionFormatError) as info:
        parse_decision(text, BATCH)
    assert info.value.code == code
    assert isinstance(info.value, VlqcError)


# --- ops pass: operations -------------------------------------------------------------------------


def test_each_op_kind_becomes_an_operation():
    answer = ops(
        [
            add(),
            update(evidence=["QC-A-1::fail", "QC-A-2::pass", "QC-A-1::fail"]),
            {"op": "delete", "key": "G3", "rationale": "与G1重复", "evidence": ["QC-A-2::pass"]},
            {
                "op": "merge",
                "key": "G2",
                "text": RULE,
                "rationale": "合并",
                "evidence": ["QC-A-1::fail"],
                "merged_from": ["G4", "G5"],
            },
        ]
    )
    result = parse_ops(answer, BATCH, max_operations=5)
    assert result.has_evidence is True and result.analysis == "挡风板方向" and result.dropped == ()
    created, updated, deleted, merged = result.operations
    assert (created.op, created.key, created.text, created.merged_from) == ("add", None, RULE, ())
    assert (updated.op, updated.key, updated.evidence) == ("update", "G1", ("QC-A-1::fail", "QC-A-2::pass"))
    assert (deleted.op, deleted.key, deleted.text, deleted.rationale) == ("delete", "G3", None, "与G1重复")
    assert (merged.op, merged.key, merged.merged_from) == ("merge", "G2", ("G4", "G5"))


def test_none_op_is_ignored_without_a_record():
    result = parse_ops(ops([{"op": "none"}, update()]), BATCH, max_operations=5)
    assert [op.op for op in result.operations] == ["update"]
    assert result.dropped == ()


def test_only_the_first_add_is_kept():
    result = parse_ops(ops([add(), add(evidence=["QC-A-1::fail"]), update()]), BATCH, max_operations=5)
    assert [op.op for op in result.operations] == ["add", "update"]
    assert result.dropped == (Dropped("operations[1]", "at most one add per batch"),)


def test_operations_are_capped_in_answer_order():
    answer = ops([update("G1"), update("G2"), add(), add(), update("G3")])
    result = parse_ops(answer, BATCH, max_operations=3)
    assert [(op.op, op.key) for op in result.operations] == [("update", "G1"), ("update", "G2"), ("add", None)]
    assert [d.what for d in result.dropped] == ["operations[3]", "operations[4]"]
    assert "max_operations=3" in result.dropped[1].why


def test_an_invalid_add_leaves_room_for_a_later_one():
    result = parse_ops(ops([add(evidence=["QC-B-1::fail"]), add()]), BATCH, max_operations=5)
    assert [op.evidence for op in result.operations] == [("QC-A-3::fail",)]
    assert [d.what for d in result.dropped] == ["operations[0]"]


def test_evidence_outside_the_learnable_set_drops_only_that_operation():
    learnable = BATCH[:2]  # QC-A-3 was stop-gradient in the decision pass
    result = parse_ops(ops([update("G1"), add()]), learnable, max_operations=5)
    assert [op.key for op in result.operations] == ["G1"]
    (dropped,) = result.dropped
    assert dropped.what == "operations[1]" and "QC-A-3::fail" in dropped.why


def test_field_limits_are_inclusive():
    operation = update(text="规" * TEXT_MAX, rationale="理" * RATIONALE_MAX)
    assert len(parse_ops(ops([operation]), BATCH, 5).operations) == 1


BAD_OPERATIONS = [
    ({"op": "rewrite", "key": "G1", "text": RULE, "rationale": "", "evidence": ["QC-A-1::fail"]}, "op must be"),
    (update(op=None), "op must be"),
    (add(key="G7"), "add takes no key"),
    (update(key=None), "needs key G<n>"),
    ({k: v for k, v in update().items() if k != "key"}, "needs key G<n>"),
    (update(key="S1"), "needs key G<n>"),
    (update(key="g1"), "needs key G<n>"),
    (update(key="G01"), "needs key G<n>"),
    (update(text="规" * (TEXT_MAX + 1)), "at most 160"),
    (update(text="  "), "text must not be empty"),
    ({k: v for k, v in update().items() if k != "text"}, "text is missing"),
    (
        {"op": "delete", "key": "G3", "text": RULE, "rationale": "", "evidence": ["QC-A-1::fail"]},
        "delete takes no text",
    ),
    (update(rationale="理" * (RATIONALE_MAX + 1)), "at most 60"),
    ({k: v for k, v in update().items() if k != "rationale"}, "rationale is missing"),
    (update(evidence=[]), "evidence must not be empty"),
    (update(evidence="QC-A-1::fail"), "evidence must be a list"),
    (update(evidence=["QC-A-1::fail", "QC-Z-0::pass"]), "outside the learnable set"),
    (update(merged_from=["G2"]), "merged_from belongs to merge only"),
    (update(op="merge"), "merged_from is missing"),
    (update(op="merge", merged_from=[]), "merged_from must not be empty"),
    (update(op="merge", key="G2", merged_from=["G4", "G2"]), "must not contain the merge target"),
    (update(op="merge", merged_from=["S1"]), "must list G<n> keys"),
    (update(confidence=0.9), "unknown fields: confidence"),
]


@pytest.mark.parametrize("operation, why", BAD_OPERATIONS)
def test_an_operation_breaking_a_field_rule_is_dropped_and_reported(operation, why):
    result = parse_ops(ops([operation, update("G9")]), BATCH, max_operations=5)
    assert [op.key for op in result.operations] == ["G9"]  # the good one survives
    (dropped,) = result.dropped
    assert dropped.what == "operations[0]" and why in dropped.why


# --- ops pass: hypotheses and top level -----------------------------------------------------------


def test_hypotheses_are_parsed_with_an_optional_dimension():
    with_dimension = {**HYPOTHESIS, "dimension": "安装方向", "evidence": ["QC-A-1::fail", "QC-A-3::fail"]}
    result = parse_ops(ops(hypotheses=[HYPOTHESIS, with_dimension]), BATCH, max_operations=5)
    assert result.hypotheses == (
        Hypothesis(HYPOTHESIS["text"], HYPOTHESIS["falsifier"], ("QC-A-1::fail",), None),
        Hypothesis(HYPOTHESIS["text"], HYPOTHESIS["falsifier"], ("QC-A-1::fail", "QC-A-3::fail"), "安装方向"),
    )


BAD_HYPOTHESES = [
    ({**HYPOTHESIS, "text": "挡风板方向值得关注"}, "must conclude"),
    ({**HYPOTHESIS, "text": "挡风板方向存疑时通过但需复核"}, "must conclude"),
    ({**HYPOTHESIS, "text": "证据不足时判通过"}, "must conclude"),
    ({**HYPOTHESIS, "text": "若" + "挡" * TEXT_MAX + "则判不通过"}, "at most 160"),
    ({**HYPOTHESIS, "falsifier": ""}, "falsifier must not be empty"),
    ({**HYPOTHESIS, "falsifier": "反" * (FALSIFIER_MAX + 1)}, "at most 80"),
    ({k: v for k, v in HYPOTHESIS.items() if k != "falsifier"}, "falsifier is missing"),
    ({**HYPOTHESIS, "evidence": []}, "evidence must not be empty"),
    ({**HYPOTHESIS, "evidence": ["QC-B-7::fail"]}, "outside the learnable set"),
    ({**HYPOTHESIS, "dimension": "品牌"}, "brand"),
    ({**HYPOTHESIS, "dimension": "Brand"}, "brand"),
    ({**HYPOTHESIS, "dimension": "设备品牌"}, "brand"),
    ({**HYPOTHESIS, "dimension": ""}, "dimension must not be empty"),
    ({**HYPOTHESIS, "confidence": 0.5}, "unknown fields"),
]


@pytest.mark.parametrize("hypothesis, why", BAD_HYPOTHESES)
def test_a_bad_hypothesis_is_dropped_and_reported(hypothesis, why):
    result = parse_ops(ops(hypotheses=[hypothesis, HYPOTHESIS]), BATCH, max_operations=5)
    assert len(result.hypotheses) == 1
    (dropped,) = result.dropped
    assert dropped.what == "hypotheses[0]" and why in dropped.why


OPS_ERRORS = [
    ("{has_evidence: true}", "not_json"),
    ("null", "not_object"),
    (ops(coverage={"learnable_ticket_keys": []}), "extra_fields"),
    (dumps({"has_evidence": True, "evidence_analysis": "", "operations": []}), "missing_fields"),
    (ops(has_evidence="yes"), "bad_field"),
    (ops(has_evidence=1), "bad_field"),
    (ops(evidence_analysis="析" * (EVIDENCE_ANALYSIS_MAX + 1)), "bad_field"),
    (ops(operations={"op": "add"}), "bad_field"),
    (ops(hypotheses=None), "bad_field"),
    (ops(operations=["add G1"]), "not_object"),
    (ops(hypotheses=[HYPOTHESIS, []]), "not_object"),
    (
        '{"has_evidence": true, "has_evidence": false, "evidence_analysis": "", "operations": [], "hypotheses": []}',
        "duplicate_field",
    ),
]


@pytest.mark.parametrize("text, code", OPS_ERRORS)
def test_ops_contract_violations_invalidate_the_answer(text, code):
    with pytest.raises(ReflectionFormatError) as info:
        parse_ops(text, BATCH, max_operations=5)
    assert info.value.code == code


def test_ops_answer_may_be_fenced_and_report_no_evidence():
    result = parse_ops(f"```json\n{ops(has_evidence=False, evidence_analysis='')}\n```", BATCH, 5)
    assert (result.has_evidence, result.operations, result.hypotheses) == (False, (), ())


# --- closure and retries ----------------------------------------------------------------------------


def test_closure_is_the_union_of_operation_and_hypothesis_evidence():
    learnable = ("QC-A-4::pass", *BATCH)
    result = parse_ops(ops([update(evidence=["QC-A-3::fail"])], [HYPOTHESIS]), learnable, max_operations=5)
    covered, uncovered = closure(learnable, result.operations, result.hypotheses)
    assert covered == ("QC-A-1::fail", "QC-A-3::fail")
    assert uncovered == ("QC-A-4::pass", "QC-A-2::pass")


def test_closure_ignores_dropped_operations():
    result = parse_ops(ops([update("G1"), update("G2", evidence=["QC-A-2::pass"])]), BATCH, max_operations=1)
    assert closure(BATCH, result.operations, result.hypotheses) == (("QC-A-1::fail",), ("QC-A-2::pass", "QC-A-3::fail"))


def test_retry_batches_halve_per_attempt_in_natural_order():
    keys = [f"QC-A-{n}::fail" for n in (10, 2, 7, 1, 30)]
    assert retry_batches(keys, 4, 0) == [
        ("QC-A-1::fail", "QC-A-2::fail", "QC-A-7::fail", "QC-A-10::fail"),
        ("QC-A-30::fail",),
    ]
    assert [len(b) for b in retry_batches(keys, 4, 1)] == [2, 2, 1]
    assert [len(b) for b in retry_batches(keys, 4, 5)] == [1] * 5  # never below one
    nine = [f"QC-B-{n}::pass" for n in range(9)]
    assert [[len(b) for b in retry_batches(nine, 16, attempt)] for attempt in range(4)] == [
        [9],
        [8, 1],
        [4, 4, 1],
        [2, 2, 2, 2, 1],
    ]
    assert retry_batches(reversed(keys), 4, 1) == retry_batches(keys, 4, 1)
    assert retry_batches([], 4, 0) == []


def test_retry_batches_rejects_bad_arguments():
    with pytest.raises(VlqcError):
        retry_batches(BATCH, 0, 0)
    with pytest.raises(VlqcError):
        retry_batches(BATCH, 4, -1)


# --- prompts --------------------------------------------------------------------------------------

GUIDANCE = {"G10": "规则十", "G0": "挡风板按要求安装", "S1": "先看全局图", "G2": "规则二"}
TICKETS = [
    {
        "ticket_key": "QC-A-1::fail",
        "gt_label": "fail",
        "pred_verdict": "pass",
        "pred_reason": "Image1: 挡风板齐全",
        "per_image": {"image_2": "无关图片", "image_1": '<DOMAIN=BBU>, <TASK=SUMMARY>\n{"统计": []}'},
    },
]


def test_decision_prompt_states_the_contract():
    system, user = decision_prompt("挡风板安装检查", GUIDANCE, TICKETS)
    assert '"no_evidence_group_ids"' in system and '"decision_analysis"' in system
    assert f"不超过{DECISION_ANALYSIS_MAX}字" in system and "不得输出 operations" in system
    assert "ticket_key: QC-A-1::fail" in user and "标签: 不通过; 模型判定: 通过" in user


def test_ops_prompt_states_every_field_and_limit():
    system, _ = ops_prompt("挡风板安装检查", GUIDANCE, TICKETS, max_operations=4)
    for name in (
        "has_evidence",
        "evidence_analysis",
        "operations",
        "hypotheses",
        "op",
        "key",
        "text",
        "rationale",
        "evidence",
        "merged_from",
        "falsifier",
        "dimension",
    ):
        assert f"{name}" in system
    for word in ("add", "update", "delete", "merge", "none"):
        assert word in system
    for limit in (EVIDENCE_ANALYSIS_MAX, TEXT_MAX, RATIONALE_MAX, FALSIFIER_MAX):
        assert f"不超过{limit}字" in system
    assert "至多 4 项" in system and "add 至多 1 项" in system


def test_prompt_user_text_lists_rules_in_numeric_order_and_clean_summaries():
    _, user = ops_prompt("挡风板安装检查", GUIDANCE, TICKETS, max_operations=5)
    assert user.startswith("任务: 挡风板安装检查\n")
    rules = [line.split("]")[0] for line in user.splitlines() if line.startswith("[")]
    assert rules == ["[S1", "[G0", "[G2", "[G10"]
    assert user.endswith('Image1: {"统计": []}\nImage2: 无关图片')


def test_prompt_rejects_incomplete_tickets():
    with pytest.raises(VlqcError, match="missing per_image"):
        decision_prompt("挡风板安装检查", GUIDANCE, [{k: v for k, v in TICKETS[0].items() if k != "per_image"}])
    with pytest.raises(VlqcError, match="pred_verdict must be pass or fail"):
        decision_prompt("挡风板安装检查", GUIDANCE, [{**TICKETS[0], "pred_verdict": None}])
    with pytest.raises(VlqcError, match="at least one ticket"):
        ops_prompt("挡风板安装检查", GUIDANCE, [], max_operations=5)
