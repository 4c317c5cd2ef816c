"""The two reflection passes (docs/guidance.md#reflection): prompts, strict answer parsing, learnability closure.

Decision pass (sees the ground-truth labels) answers exactly

    {"no_evidence_group_ids": [ticket_key, ...], "decision_analysis": "≤200 chars, may be empty"}

Ops pass (on the learnable set L) answers exactly

    {"has_evidence": bool, "evidence_analysis": "≤120 chars",
     "operations": [{"op", "key"?, "text"?, "rationale", "evidence", "merged_from"?}, ...],
     "hypotheses": [{"text", "falsifier", "evidence", "dimension"?}, ...]}

An answer is the JSON object alone, optionally inside one ```json fence; surrounding whitespace is fine.

What invalidates the whole answer — `ReflectionFormatError`; the caller retries a bounded number of
times and then records `failure_malformed`. The shape the model was told to produce is not there, so
nothing in it can be trusted:
    not_json          not one JSON value, or text around it
    duplicate_field   an object repeats a key (json would silently keep the last one)
    not_object        the answer, an operation or a hypothesis is not a JSON object
    missing_fields    a top-level field is absent
    extra_fields      a top-level field the contract does not name: `operations` in a decision answer,
                      or the origin's optional `coverage` block (the closure is computed here, never
                      taken from the model)
    bad_field         a top-level field has the wrong type or is too long

What drops one item — recorded in `dropped` as (what, why), so nothing vanishes silently. The answer
is well formed and its other proposals still count:
    - a decision id that is not a ticket key of the batch;
    - an operation or hypothesis that breaks a field rule (unknown op or field, missing or malformed
      key, text/rationale/falsifier missing or too long, evidence empty or outside the learnable set,
      misused merged_from, a hypothesis without a binary 通过/不通过 conclusion, a brand dimension);
    - a second `add`, then anything beyond `max_operations` (answer order decides what is kept).
`op: "none"` is an explicit no-op and is skipped without a record.

Rules that need the guidance itself — S*/G0 protection, add→update by similarity, forbidden
phrases, merged_from keys existing — are applied by `vlqc.stage_b.guidance`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from vlqc.errors import VlqcError
from vlqc.inference.answers import FORBIDDEN_IN_REASON, AnswerError, decode_json_answer, strip_summary_header
from vlqc.inference.prompts import LABELS
from vlqc.stage_b.guidance import OPS, Operation
from vlqc.tickets import natural_key

DECISION_ANALYSIS_MAX = 200
EVIDENCE_ANALYSIS_MAX = 120
TEXT_MAX = 160
RATIONALE_MAX = 60
FALSIFIER_MAX = 80

NO_OP = "none"
# The ops that act on an existing rule, named by its key.
KEYED_OPS = frozenset({"update", "delete", "merge"})

DECISION_FIELDS = ("no_evidence_group_ids", "decision_analysis")
OPS_FIELDS = ("has_evidence", "evidence_analysis", "operations", "hypotheses")
OP_FIELDS = ("op", "key", "text", "rationale", "evidence", "merged_from")
HYPOTHESIS_FIELDS = ("text", "falsifier", "evidence", "dimension")
TICKET_FIELDS = ("ticket_key", "gt_label", "pred_verdict", "pred_reason", "per_image")

_RULE_KEY = re.compile(r"^G(?:0|[1-9][0-9]*)$")
# A hypothesis must end in a verdict; these words name the third state that verdicts forbid.
_THIRD_STATE = ("复核", *FORBIDDEN_IN_REASON)
_BRAND_WORDS = ("brand", "品牌")

T = TypeVar("T")


class ReflectionFormatError(VlqcError):
    """A reflection answer breaks its contract as a whole; `code` is a stable reason."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{message} [{code}]")


class Dropped(NamedTuple):
    """One part of a well-formed answer that was not kept: where it stood and why."""

    what: str
    why: str


@dataclass(frozen=True)
class Decision:
    no_evidence: tuple[str, ...]
    analysis: str
    dropped: tuple[Dropped, ...] = ()


@dataclass(frozen=True)
class Hypothesis:
    text: str
    falsifier: str
    evidence: tuple[str, ...]
    dimension: str | None = None


@dataclass(frozen=True)
class OpsResult:
    has_evidence: bool
    analysis: str
    operations: tuple[Operation, ...]
    hypotheses: tuple[Hypothesis, ...]
    dropped: tuple[Dropped, ...] = ()


class _BadField(Exception):
    """A field breaks its rule: fatal at the top level, drops the item inside a list."""


# --- parsing ------------------------------------------------------------------------------------


def parse_decision(text: str, batch_keys: Iterable[str]) -> Decision:
    """The decision answer; ids that are not among `batch_keys` are dropped into `Decision.dropped`."""
    doc = _load_object(text, DECISION_FIELDS)
    with _fatal():
        ids = _string_list(doc, "no_evidence_group_ids")
        analysis = _string(doc, "decision_analysis", DECISION_ANALYSIS_MAX)
    batch = set(batch_keys)
    unknown = [key for key in ids if key not in batch]
    return Decision(
        no_evidence=tuple(key for key in ids if key in batch),
        analysis=analysis,
        dropped=tuple(Dropped(key, "not a ticket key of this batch") for key in unknown),
    )


def parse_ops(text: str, learnable_keys: Iterable[str], max_operations: int) -> OpsResult:
    """The ops answer for a batch whose learnable tickets are `learnable_keys`; see the module docstring
    for what raises and what is dropped into `OpsResult.dropped`."""
    if max_operations < 0:
        raise VlqcError(f"max_operations must be >= 0, not {max_operations}")
    doc = _load_object(text, OPS_FIELDS)
    with _fatal():
        if not isinstance(doc["has_evidence"], bool):
            raise _BadField("has_evidence must be true or false")
        analysis = _string(doc, "evidence_analysis", EVIDENCE_ANALYSIS_MAX)
        raw_operations, raw_hypotheses = _object_list(doc, "operations"), _object_list(doc, "hypotheses")
    learnable = frozenset(learnable_keys)
    dropped: list[Dropped] = []
    operations = _kept(raw_operations, "operations", lambda item: _operation(item, learnable), dropped)
    hypotheses = _kept(raw_hypotheses, "hypotheses", lambda item: _hypothesis(item, learnable), dropped)
    return OpsResult(
        has_evidence=doc["has_evidence"],
        analysis=analysis,
        operations=_capped(operations, max_operations, dropped),
        hypotheses=tuple(hypothesis for _, hypothesis in hypotheses),
        dropped=tuple(dropped),
    )


def _load_object(text: str, fields: Sequence[str]) -> dict[str, Any]:
    try:
        doc = decode_json_answer(text)  # not_json, duplicate_field
    except AnswerError as exc:
        raise ReflectionFormatError(exc.rule, exc.message) from None
    if not isinstance(doc, dict):
        raise ReflectionFormatError("not_object", f"the answer must be one JSON object, not {type(doc).__name__}")
    if extra := sorted(set(doc) - set(fields)):
        raise ReflectionFormatError("extra_fields", f"fields not in the contract: {', '.join(extra)}")
    if missing := [field for field in fields if field not in doc]:
        raise ReflectionFormatError("missing_fields", f"missing fields: {', '.join(missing)}")
    return doc


@contextmanager
def _fatal() -> Iterator[None]:
    """Turns a top-level `_BadField` into `ReflectionFormatError("bad_field")`."""
    try:
        yield
    except _BadField as exc:
        raise ReflectionFormatError("bad_field", str(exc)) from None


def _kept(
    items: list[dict], where: str, parse_one: Callable[[dict], T | None], dropped: list[Dropped]
) -> list[tuple[int, T]]:
    """(index, parsed) for every item that keeps its contract; the others go to `dropped`."""
    kept = []
    for index, item in enumerate(items):
        try:
            parsed = parse_one(item)
        except _BadField as exc:
            dropped.append(Dropped(f"{where}[{index}]", str(exc)))
            continue
        if parsed is not None:
            kept.append((index, parsed))
    return kept


def _capped(
    operations: list[tuple[int, Operation]], max_operations: int, dropped: list[Dropped]
) -> tuple[Operation, ...]:
    kept: list[Operation] = []
    for index, operation in operations:
        if operation.op == "add" and any(k.op == "add" for k in kept):
            dropped.append(Dropped(f"operations[{index}]", "at most one add per batch"))
        elif len(kept) >= max_operations:
            dropped.append(Dropped(f"operations[{index}]", f"over max_operations={max_operations}"))
        else:
            kept.append(operation)
    return tuple(kept)


def _operation(item: dict, learnable: frozenset[str]) -> Operation | None:
    kind = item.get("op")
    if kind == NO_OP:
        return None
    if kind not in OPS:
        raise _BadField(f"op must be one of {', '.join((*OPS, NO_OP))}, not {kind!r}")
    _known_fields(item, OP_FIELDS)
    key = _rule_key(item, kind)
    if kind == "delete" and "text" in item:
        raise _BadField("delete takes no text")
    return Operation(
        op=kind,
        key=key,
        text=None if kind == "delete" else _string(item, "text", TEXT_MAX, non_empty=True),
        rationale=_string(item, "rationale", RATIONALE_MAX),
        evidence=_evidence(item, learnable),
        merged_from=_merged_from(item, kind, key),
    )


def _rule_key(item: dict, kind: str) -> str | None:
    if kind not in KEYED_OPS:
        if "key" in item:
            raise _BadField("add takes no key (the next free G<n> is assigned)")
        return None
    key = item.get("key")
    if not isinstance(key, str) or not _RULE_KEY.match(key):
        raise _BadField(f"{kind} needs key G<n>, not {key!r}")
    return key


def _merged_from(item: dict, kind: str, key: str | None) -> tuple[str, ...]:
    if kind != "merge":
        if "merged_from" in item:
            raise _BadField("merged_from belongs to merge only")
        return ()
    keys = _string_list(item, "merged_from", non_empty=True)
    if bad := [k for k in keys if not _RULE_KEY.match(k)]:
        raise _BadField(f"merged_from must list G<n> keys, not {bad}")
    if key in keys:
        raise _BadField(f"merged_from must not contain the merge target {key}")
    return keys


def _hypothesis(item: dict, learnable: frozenset[str]) -> Hypothesis:
    _known_fields(item, HYPOTHESIS_FIELDS)
    text = _string(item, "text", TEXT_MAX, non_empty=True)
    squeezed = re.sub(r"\s+", "", text).lower()
    if "通过" not in squeezed or any(word in squeezed for word in _THIRD_STATE):
        raise _BadField("hypothesis text must conclude 通过 or 不通过, without a third state")
    return Hypothesis(
        text=text,
        falsifier=_string(item, "falsifier", FALSIFIER_MAX, non_empty=True),
        evidence=_evidence(item, learnable),
        dimension=_dimension(item),
    )


def _dimension(item: dict) -> str | None:
    if "dimension" not in item:
        return None
    dimension = _string(item, "dimension", non_empty=True)
    if any(word in dimension.lower() for word in _BRAND_WORDS):
        raise _BadField(f"dimension {dimension!r}: brand is not a learnable dimension")
    return dimension


def _evidence(item: dict, learnable: frozenset[str]) -> tuple[str, ...]:
    keys = _string_list(item, "evidence", non_empty=True)
    if outside := [key for key in keys if key not in learnable]:
        raise _BadField(f"evidence outside the learnable set: {outside}")
    return keys


def _known_fields(item: dict, fields: Sequence[str]) -> None:
    if extra := sorted(set(item) - set(fields)):
        raise _BadField(f"unknown fields: {', '.join(extra)}")


def _string(obj: dict, field: str, limit: int | None = None, non_empty: bool = False) -> str:
    """The stripped string `obj[field]`, at most `limit` characters when a limit is given."""
    value = obj.get(field)
    if not isinstance(value, str):
        raise _BadField(f"{field} must be a string" if field in obj else f"{field} is missing")
    value = value.strip()
    if non_empty and not value:
        raise _BadField(f"{field} must not be empty")
    if limit is not None and len(value) > limit:
        raise _BadField(f"{field} has {len(value)} characters, at most {limit}")
    return value


def _string_list(obj: dict, field: str, non_empty: bool = False) -> tuple[str, ...]:
    """The stripped strings of list `obj[field]`, duplicates removed, in answer order."""
    value = obj.get(field)
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _BadField(f"{field} must be a list of non-empty strings" if field in obj else f"{field} is missing")
    if non_empty and not value:
        raise _BadField(f"{field} must not be empty")
    return tuple(dict.fromkeys(v.strip() for v in value))


def _object_list(doc: dict, field: str) -> list[dict]:
    value = doc[field]
    if not isinstance(value, list):
        raise _BadField(f"{field} must be a list")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ReflectionFormatError("not_object", f"{field}[{index}] must be an object, not {type(item).__name__}")
    return value


# --- learnability closure -----------------------------------------------------------------------


def closure(
    learnable_keys: Iterable[str], operations: Iterable[Operation], hypotheses: Iterable[Hypothesis]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(covered, uncovered): learnable keys cited by some operation or hypothesis (L = E ∪ H), and the
    rest, both in the order of `learnable_keys`."""
    cited = {key for item in (*operations, *hypotheses) for key in item.evidence}
    learnable = tuple(dict.fromkeys(learnable_keys))
    return tuple(k for k in learnable if k in cited), tuple(k for k in learnable if k not in cited)


def retry_batches(uncovered: Iterable[str], batch_size: int, attempt: int) -> list[tuple[str, ...]]:
    """Uncovered keys in natural order, cut into batches of `batch_size // 2**attempt` (at least 1)."""
    if batch_size < 1 or attempt < 0:
        raise VlqcError(f"batch_size must be >= 1 and attempt >= 0, not {batch_size} and {attempt}")
    size = max(1, batch_size // 2**attempt)
    keys = sorted(set(uncovered), key=lambda key: (natural_key(key), key))
    return [tuple(keys[start : start + size]) for start in range(0, len(keys), size)]


# --- prompts ------------------------------------------------------------------------------------

_ANSWER_FORMAT = "只输出一个JSON对象（可放在```json代码块中），不要其他文字。"

DECISION_SYSTEM = (
    "你是通信安装质检规则的复盘员。下列工单的模型判定与人工标签不一致，或模型多次采样意见不一，以标签为准。"
    "找出完全没有可学习方向的工单：摘要里找不到任何能支持该标签的依据。只要存在可学习方向就不要列出。"
    f"{_ANSWER_FORMAT}格式：\n"
    '{"no_evidence_group_ids": ["<ticket_key>", ...], "decision_analysis": "<分析>"}\n'
    "- no_evidence_group_ids: 字符串列表，只能取下列工单的 ticket_key，可为空列表\n"
    f"- decision_analysis: 字符串，不超过{DECISION_ANALYSIS_MAX}字，可为空\n"
    "只允许这两个字段，不得输出 operations 或其他字段。"
)

_OPS_SHAPE = '{"has_evidence": true或false, "evidence_analysis": "<分析>", "operations": [...], "hypotheses": [...]}'


def ops_system(max_operations: int) -> str:
    """The ops-pass contract, worded as `parse_ops` enforces it."""
    return (
        "你是通信安装质检规则的维护员。下列工单的模型判定与人工标签不一致，或模型多次采样意见不一，以标签为准，且都存在可学习方向。"
        f"请修改规则，使模型稳定地按标签判定。{_ANSWER_FORMAT}格式：\n{_OPS_SHAPE}\n"
        f"只允许这四个字段。has_evidence: 布尔值；evidence_analysis: 字符串，不超过{EVIDENCE_ANALYSIS_MAX}字。\n"
        "operations 每项只允许以下字段：\n"
        "- op: add | update | delete | merge | none（none 不生效）\n"
        "- key: 规则编号 G<n>；update、delete、merge 必填，add 不写\n"
        f"- text: 规则全文，不超过{TEXT_MAX}字；delete 不写，其余必填\n"
        f"- rationale: 修改理由，字符串，不超过{RATIONALE_MAX}字\n"
        "- evidence: 支持该修改的 ticket_key 列表，非空，只能取自下列工单\n"
        "- merged_from: 只有 merge 填写，被并入的 G<n> 列表，非空且不含 key\n"
        f"operations 至多 {max_operations} 项，其中 add 至多 1 项，优先 update 或 merge。"
        "S 开头的结构不变量只读；G0 可更新，不可删除或被并入。"
        "规则只写确定结论（通过或不通过），不写复核、证据不足、待定等第三态，不粘贴图片摘要原文。\n"
        "hypotheses 每项只允许以下字段：\n"
        f"- text: 待验证的规则假设，不超过{TEXT_MAX}字，须以“通过”或“不通过”作结论\n"
        f"- falsifier: 什么情况能推翻该假设，非空，不超过{FALSIFIER_MAX}字\n"
        "- evidence: 支持它的 ticket_key 列表，非空，只能取自下列工单\n"
        "- dimension: 可选，假设所属维度，不得是品牌\n"
        "每个工单的 ticket_key 都应出现在某条 operation 或 hypothesis 的 evidence 中。"
    )


def decision_prompt(
    mission: str, guidance_experiences: Mapping[str, str], tickets: Sequence[Mapping[str, Any]]
) -> tuple[str, str]:
    """System and user text of the decision pass for a batch of tickets to reflect on: verdict ≠ label,
    or the samples disagreed (low agreement) even where the selected verdict matches.

    A ticket is a mapping with `ticket_key`, `gt_label` and `pred_verdict` (pass|fail), `pred_reason`
    and `per_image` (image_<n> → Stage-A summary).
    """
    return DECISION_SYSTEM, _user_text(mission, guidance_experiences, tickets)


def ops_prompt(
    mission: str, guidance_experiences: Mapping[str, str], tickets: Sequence[Mapping[str, Any]], max_operations: int
) -> tuple[str, str]:
    """System and user text of the ops pass for the learnable tickets (same mapping as `decision_prompt`)."""
    return ops_system(max_operations), _user_text(mission, guidance_experiences, tickets)


def _user_text(mission: str, experiences: Mapping[str, str], tickets: Sequence[Mapping[str, Any]]) -> str:
    if not tickets:
        raise VlqcError(f"{mission}: a reflection batch needs at least one ticket")
    # S before G, each in numeric order (G2 before G10).
    keys = sorted(experiences, key=lambda key: (not key.startswith("S"), natural_key(key)))
    lines = [f"任务: {mission}", "当前规则（S 只读，G 可学习）:", *(f"[{key}] {experiences[key]}" for key in keys)]
    lines.append("工单:")
    for ticket in tickets:
        lines += _ticket_lines(ticket)
    return "\n".join(lines)


def _ticket_lines(ticket: Mapping[str, Any]) -> list[str]:
    key = ticket.get("ticket_key", "?")
    if missing := [field for field in TICKET_FIELDS if field not in ticket]:
        raise VlqcError(f"reflection ticket {key}: missing {', '.join(missing)}")
    for field in ("gt_label", "pred_verdict"):
        if ticket[field] not in LABELS:
            raise VlqcError(f"reflection ticket {key}: {field} must be pass or fail, not {ticket[field]!r}")
    images = sorted(ticket["per_image"], key=natural_key)
    return [
        f"--- ticket_key: {key}",
        f"标签: {LABELS[ticket['gt_label']]}; 模型判定: {LABELS[ticket['pred_verdict']]}",
        f"模型理由: {ticket['pred_reason']}",
        *(f"{name.replace('image_', 'Image')}: {strip_summary_header(ticket['per_image'][name])}" for name in images),
    ]
