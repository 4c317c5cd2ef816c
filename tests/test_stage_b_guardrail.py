"""The fail-first guardrail: clause splitting, trigger exclusions, mission relevance and the Reason rewrite."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

from vlqc.data.summary import IRRELEVANT, build_legacy_summary, build_summary
from vlqc.inference.answers import parse_verdict
from vlqc.inference.prompts import REASON_MAX_CHARS
from vlqc.missions import load_missions, mission_rules
from vlqc.stage_b.guardrail import (
    CONCLUSION,
    GUARDRAIL,
    HARD,
    IRRELEVANT_HIT,
    MODEL,
    NEGATION_PREFIXES,
    PENDING,
    PENDING_PHRASES,
    Clause,
    apply,
    find_trigger,
    guardrail_reason,
    is_relevant,
    scan,
    split_clauses,
)

RULES = mission_rules(load_missions(REPO / "config" / "missions.yaml"))
SCREW = RULES["BBU安装方式检查（正装）"]
SHIELD = RULES["挡风板安装检查"]
GROUND = RULES["BBU接地线检查"]

BAD_SCREWS = build_summary(["类别=BBU安装螺丝,可见性=完整,符合性=不符合,问题=露铜"], "BBU")
GOOD_SCREWS = build_summary(["类别=BBU安装螺丝,可见性=完整,符合性=符合", "类别=BBU设备,品牌=华为,可见性=完整"], "BBU")
MISSING_SHIELD = build_summary(
    ["类别=BBU设备,品牌=华为,可见性=完整,挡风板需求=空间充足需安装,挡风板符合性=未按要求配备"], "BBU"
)
LOOSE_FASTENER = build_summary(["类别=站点距离,站点距离=35", "类别=RRU设备", "类别=紧固件,安装状态=不合格"], "RRU")


def kinds(per_image, rule):
    return [hit.kind for hit in scan(per_image, rule).hits]


# --- clauses --------------------------------------------------------------------------------------


def test_json_summary_gives_one_clause_per_attribute_value_with_the_category_as_subject():
    summary = build_summary(
        [
            "类别=BBU安装螺丝,可见性=完整,符合性=不符合,问题=未拧紧|生锈",
            "类别=BBU设备,品牌=华为,可见性=部分,备注=螺丝松动",
        ],
        "BBU",
    )
    clauses = split_clauses(summary)
    assert [c.text for c in clauses] == [
        "BBU安装螺丝可见性=完整",
        "BBU安装螺丝符合性=不符合",
        "BBU安装螺丝问题=未拧紧",
        "BBU安装螺丝问题=生锈",
        "BBU设备可见性=部分",
        "BBU设备品牌=华为",
        "备注:螺丝松动",
    ]
    assert [c.subject for c in clauses] == ["BBU安装螺丝"] * 4 + ["BBU设备"] * 2 + [None]


def test_rru_group_counts_are_not_clauses_and_the_header_line_is_stripped():
    summary = build_summary(["类别=尾纤,标签=有标签,套管保护=无套管,组=1", "类别=标签,文本=5G-RRU1-尾纤,组=1"], "RRU")
    texts = [c.text for c in split_clauses("<DOMAIN=RRU>, <TASK=SUMMARY>\n" + summary)]
    assert texts == ["尾纤套管保护=无套管", "尾纤标签=有标签", "标签文本=5G-RRU1-尾纤"]


def test_irrelevant_image_has_no_clauses():
    assert split_clauses(IRRELEVANT) == []
    assert scan([IRRELEVANT, IRRELEVANT], SCREW).hits == ()


def test_legacy_summary_splits_on_semicolons_newlines_and_full_width_commas():
    legacy = build_legacy_summary(["BBU设备/需复核,备注:无法判断品牌", "组1:尾纤/有标签,有套管保护"], "RRU")
    clauses = split_clauses(legacy + "；紧固件/紧固合格;RRU设备×1\n站点距离/35")
    assert [c.text for c in clauses] == [
        "组1:尾纤/有标签,有套管保护×1",
        "BBU设备/需复核,备注:无法判断品牌×1",
        "紧固件/紧固合格",
        "RRU设备×1",
        "站点距离/35",
    ]
    assert [c.subject for c in clauses] == ["尾纤", "BBU设备", "紧固件", "RRU设备", "站点距离"]


# --- triggers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", NEGATION_PREFIXES)
def test_a_negation_prefix_right_before_the_trigger_cancels_it(prefix):
    assert find_trigger(f"挡风板{prefix}松动") is None
    assert find_trigger(f"挡风板{prefix} 损坏") is None  # whitespace between does not matter


def test_a_negation_elsewhere_in_the_clause_does_not_cancel():
    assert find_trigger("挡风板松动") == "松动"
    assert find_trigger("没有标签，螺丝松动") == "松动"
    assert find_trigger("未见损坏但螺丝松动") == "松动"  # the first hit is negated, the second is not


@pytest.mark.parametrize("text", ["螺丝是否松动", "标签能否损坏", "挡风板是不是反向", "螺丝是否 松动"])
def test_question_context_cancels_the_trigger(text):
    assert find_trigger(text) is None


def test_question_marker_must_end_the_six_characters_before_the_hit():
    assert find_trigger("是否螺丝松动") == "松动"  # 是否 is in the window but does not end it


def test_issue_pattern_is_found_before_bare_triggers():
    assert find_trigger("螺丝、光纤插头/BBU安装螺丝,不符合要求/露铜×1") == "不符合要求/露铜"
    assert find_trigger("螺丝、光纤插头/BBU安装螺丝,不符合要求×1") == "不符合"
    assert find_trigger("BBU安装螺丝问题=露铜") == "问题=露铜"


def test_bare_triggers_inside_a_negated_issue_are_not_counted_again():
    assert find_trigger("未见不符合要求/松动") is None  # 松动 is the negated issue, not a new hit


@pytest.mark.parametrize("phrase", PENDING_PHRASES)
def test_pending_phrase_turns_a_hard_hit_into_a_warning(phrase):
    clause = f"螺丝、光纤插头/BBU安装螺丝,不符合要求/露铜,{phrase}"
    assert kinds([clause], SCREW) == [PENDING]
    assert kinds(["螺丝、光纤插头/BBU安装螺丝,不符合要求/露铜"], SCREW) == [HARD]


def test_review_marker_in_a_summary_is_a_soft_signal_never_a_fail():
    legacy = build_legacy_summary(["BBU设备/需复核,备注:BBU安装螺丝松动"], "BBU")
    result = scan([legacy], SCREW)
    assert [(hit.kind, hit.trigger) for hit in result.hits] == [(PENDING, "松动")]
    assert apply("pass", "Image1: 螺丝符合", result) == ("pass", "Image1: 螺丝符合", MODEL)


# --- relevance ------------------------------------------------------------------------------------


def test_json_clauses_carry_their_attribute_and_are_relevant_when_the_rule_judges_it():
    clauses = split_clauses(BAD_SCREWS)
    assert [(c.subject, c.key) for c in clauses] == [("BBU安装螺丝", k) for k in ("可见性", "符合性", "问题")]
    assert [is_relevant(c, SCREW) for c in clauses] == [False, True, True]  # 可见性 fails no ticket
    assert not any(is_relevant(c, GROUND) for c in clauses)  # the ground mission judges other screws


def test_a_relevant_hit_is_hard_and_the_same_hit_is_irrelevant_for_another_mission():
    assert kinds([BAD_SCREWS], SCREW) == [HARD, HARD]
    assert kinds([BAD_SCREWS], SHIELD) == [IRRELEVANT_HIT, IRRELEVANT_HIT]
    # The three RRU missions are independent: a loose fastener fails only the install mission.
    assert kinds([LOOSE_FASTENER], RULES["RRU安装检查"]) == [HARD]
    assert kinds([LOOSE_FASTENER], RULES["RRU线缆"]) == [IRRELEVANT_HIT]


def test_text_clauses_are_relevant_when_they_name_a_judged_category():
    legacy = "螺丝、光纤插头/BBU安装螺丝,不符合要求/露铜×1"
    assert is_relevant(Clause(legacy, "螺丝、光纤插头"), SCREW)
    assert not is_relevant(Clause(legacy, "螺丝、光纤插头"), GROUND)
    assert is_relevant(Clause("备注:BBU安装螺丝松动", None), SCREW)
    assert is_relevant(Clause("组1:尾纤/无套管保护", "尾纤"), RULES["RRU线缆"])  # by its subject
    assert not is_relevant(Clause("螺丝/松动", "螺丝"), SCREW)  # which screw is not said


def test_a_negative_on_a_device_counts_only_for_the_mission_that_judges_that_attribute():
    # The screw mission needs to see a BBU设备 but judges none of its values.
    assert kinds([MISSING_SHIELD], SCREW) == [IRRELEVANT_HIT]
    assert kinds([MISSING_SHIELD], SHIELD) == [HARD]
    legacy = "BBU设备/华为,机柜空间充足需要安装/这个BBU设备未按要求配备挡风板×1"
    assert kinds([legacy], SCREW) == [IRRELEVANT_HIT] and kinds([legacy], SHIELD) == [HARD]
    datalist = build_summary(["类别=挡风板,属性=方向错误", "类别=BBU设备,属性=华为"], "BBU")
    assert kinds([datalist], SHIELD) == [HARD]  # a dataList 属性 of a shield is its 安装方向


# --- apply ----------------------------------------------------------------------------------------


def test_relevant_hit_overrides_pass_with_a_reason_that_agrees():
    result = scan([GOOD_SCREWS, BAD_SCREWS], SCREW)
    verdict, reason, source = apply("pass", "Image1: 螺丝符合; 总结: 任务要求均满足", result)
    assert (verdict, source) == ("fail", GUARDRAIL)
    assert reason == "Image2: BBU安装螺丝符合性=不符合; Image2: BBU安装螺丝问题=露铜; " + CONCLUSION
    assert parse_verdict(f"Verdict: 不通过\nReason: {reason}").verdict == "fail"
    assert re.search(r"(?<![A-Za-z0-9])[GS][0-9]", reason) is None  # no rule ids


def test_reason_cites_at_most_three_clauses_and_stays_within_240_characters():
    long_remark = "BBU安装螺丝松动" + "且周边线缆杂乱" * 30
    summaries = [build_summary([f"类别=BBU安装螺丝,符合性=不符合,问题=露铜,备注={long_remark}"], "BBU")] * 3
    result = scan(summaries, SCREW)
    assert len(result.hard_hits) == 9
    _, reason, _ = apply("pass", "ok", result)
    assert len(reason) <= REASON_MAX_CHARS
    assert reason.count("Image") == 3
    assert reason.endswith(CONCLUSION)


def test_duplicate_clauses_are_cited_once():
    reason = guardrail_reason(scan([BAD_SCREWS, BAD_SCREWS], SCREW).hard_hits)
    assert reason.count("Image1: BBU安装螺丝符合性=不符合") == 1
    assert "Image2" in reason


def test_model_fail_keeps_its_own_reason():
    result = scan([BAD_SCREWS], SCREW)
    assert apply("fail", "Image1: 螺丝露铜", result) == ("fail", "Image1: 螺丝露铜", MODEL)


def test_no_valid_vote_with_a_relevant_hit_becomes_a_guardrail_fail():
    verdict, _, source = apply(None, "", scan([BAD_SCREWS], SCREW))
    assert (verdict, source) == ("fail", GUARDRAIL)


def test_warnings_alone_never_override():
    result = scan([BAD_SCREWS], SHIELD)
    assert result.hard_hits == () and len(result.warnings) == 2
    assert apply("pass", "Image1: 挡风板免装", result) == ("pass", "Image1: 挡风板免装", MODEL)


def test_a_reason_needs_a_hit():
    with pytest.raises(ValueError):
        guardrail_reason(())
