"""The strict two-line verdict contract (docs/verdict.md#the-two-line-contract).

    Verdict: 通过 | 不通过
    Reason: <one line>

Anything else is an invalid candidate, with a reason code saying why: Stage-B
drops invalid candidates from the vote instead of guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vlqc.inference.prompts import strip_summary_header

PASS_WORDS = {"通过", "pass"}
FAIL_WORDS = {"不通过", "未通过", "fail"}
# Legacy "third state" verdicts; they never count as pass or fail.
THIRD_STATE = ("复核", "不确定", "无法判断", "无法判定", "待复核")
FORBIDDEN_IN_REASON = (
    "需复核",
    "需人工复核",
    "need-review",
    "needreview",
    "证据不足",
    "待定",
    "通过但需复核",
    "通过但需人工复核",
)
_SPLIT = re.compile(r"[:：]")


@dataclass(frozen=True)
class Parsed:
    verdict: str | None  # "pass" | "fail" | None when invalid
    reason: str
    error: str | None = None


def _invalid(code: str, reason: str = "") -> Parsed:
    return Parsed(None, reason, code)


def parse_verdict(text: str) -> Parsed:
    lines = [line.strip() for line in strip_summary_header(text.strip()).splitlines() if line.strip()]
    if len(lines) != 2:
        return _invalid("line_count")
    head, tail = lines
    if not head.lower().startswith("verdict") or not tail.lower().startswith("reason"):
        return _invalid("field_names")
    token_parts, reason_parts = _SPLIT.split(head, maxsplit=1), _SPLIT.split(tail, maxsplit=1)
    if len(token_parts) != 2 or len(reason_parts) != 2:
        return _invalid("missing_colon")
    reason = reason_parts[1].strip()
    if not reason:
        return _invalid("empty_reason")
    token = re.sub(r"\s+", "", token_parts[1]).lower().rstrip("。.")
    if any(word in token for word in THIRD_STATE):
        return _invalid("third_state", reason)
    if any(word in reason.replace(" ", "").lower() for word in FORBIDDEN_IN_REASON):
        return _invalid("forbidden_reason", reason)
    if token in PASS_WORDS:
        return Parsed("pass", reason)
    if token in FAIL_WORDS:
        return Parsed("fail", reason)
    return _invalid("unknown_verdict", reason)
