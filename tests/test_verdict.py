"""The strict two-line verdict contract: a table of model outputs and what they parse to."""

import pytest

from vlqc.inference.answers import parse_verdict

CASES = [
    ("Verdict: 通过\nReason: Image1: BBU安装螺丝符合; 总结: 任务要求均满足", "pass", None),
    ("Verdict: 不通过\nReason: Image2: 挡风板方向错误", "fail", None),
    ("Verdict：通过\nReason：全部符合", "pass", None),  # full-width colons
    ("Verdict: 通过。\nReason: ok", "pass", None),  # trailing 。
    ("Verdict: 不通过。\nReason: 缺少地排处接地螺丝", "fail", None),
    ("Verdict: 未通过\nReason: 螺丝生锈", "fail", None),
    ("Verdict: pass\nReason: all good", "pass", None),
    ("Verdict: FAIL\nReason: copper exposed", "fail", None),
    ("verdict: 通过\nreason: 小写字段名", "pass", None),
    ("VERDICT : 不通过\nREASON : 大写", "fail", None),
    ("Verdict: 通过\n\n\nReason: 多余空行", "pass", None),  # blank lines ignored
    ("  Verdict: 通过  \n  Reason: 前后空格  ", "pass", None),
    ("<DOMAIN=BBU>, <TASK=SUMMARY>\nVerdict: 通过\nReason: 带头部", "pass", None),
    ("Verdict: 通 过\nReason: 内部空格", "pass", None),
    ("Verdict: 不 通 过\nReason: 内部空格", "fail", None),
    ("Verdict: 通过\nReason: 含冒号: 也可以", "pass", None),
    ("Verdict: 通过\nReason: Image1: a; Image2: b; 总结: c", "pass", None),
    ("Verdict: Pass.\nReason: english with period", "pass", None),
    ("Verdict: 通过", None, "line_count"),  # missing Reason
    ("Verdict: 通过\nReason: a\nExtra: b", None, "line_count"),  # three lines
    ("", None, "line_count"),
    ("通过\n理由", None, "field_names"),
    ("Reason: x\nVerdict: 通过", None, "field_names"),  # swapped
    ("Answer: 通过\nReason: x", None, "field_names"),
    ("Verdict 通过\nReason: x", None, "missing_colon"),
    ("Verdict: 通过\nReason x", None, "missing_colon"),
    ("Verdict: 通过\nReason:", None, "empty_reason"),
    ("Verdict: 通过\nReason:    ", None, "empty_reason"),
    ("Verdict: 需复核\nReason: 看不清", None, "third_state"),
    ("Verdict: 不确定\nReason: x", None, "third_state"),
    ("Verdict: 无法判断\nReason: x", None, "third_state"),
    ("Verdict: 无法判定\nReason: x", None, "third_state"),
    ("Verdict: 待复核\nReason: x", None, "third_state"),
    ("Verdict: 通过需复核\nReason: x", None, "third_state"),
    ("Verdict: 通过需要复核。\nReason: x", None, "third_state"),
    ("Verdict: 通过\nReason: 证据不足，需复核", None, "forbidden_reason"),
    ("Verdict: 不通过\nReason: 待定", None, "forbidden_reason"),
    ("Verdict: 通过\nReason: need-review later", None, "forbidden_reason"),
    ("Verdict: 通过\nReason: 通过但需人工复核", None, "forbidden_reason"),
    ("Verdict: 合格\nReason: x", None, "unknown_verdict"),
    ("Verdict: yes\nReason: x", None, "unknown_verdict"),
    ("Verdict: 通过/不通过\nReason: x", None, "unknown_verdict"),
    ("```\nVerdict: 通过\nReason: x\n```", None, "line_count"),  # markdown fences break the contract
]


@pytest.mark.parametrize(("text", "verdict", "error"), CASES)
def test_parse_table(text, verdict, error):
    parsed = parse_verdict(text)
    assert (parsed.verdict, parsed.error) == (verdict, error)


def test_table_is_large_enough():
    assert len(CASES) >= 40


def test_reason_is_kept_without_its_label():
    assert (
        parse_verdict("Verdict: 不通过\nReason: Image1: 露铜; 总结: 存在问题").reason == "Image1: 露铜; 总结: 存在问题"
    )
