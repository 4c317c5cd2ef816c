"""The deterministic fail-first guardrail of Stage-B (docs/verdict.md).

A ticket's summaries are cut into clauses and each clause is searched for a fail-first trigger word.
A hit is kept only when the clause asserts it: not right after a negation prefix (`未见松动`), not
asked about (`是否松动`). A kept hit then becomes

    pending     the clause also holds a pending phrase (无法判断, 模糊, 需复核, …): a warning only,
                so `<type>/需复核,备注:<remark>` is a soft signal and never an automatic fail;
    hard        the clause is relevant to the mission (see below): the ticket fails;
    irrelevant  anything else: a warning only.

Clauses, by summary form:
- JSON summaries (docs/summary-format.md): one clause per value of each attribute of a `统计` entry,
  written `<类别><key>=<value>` (`BBU安装螺丝符合性=不符合`) with the category as the subject.
  An entry counts the objects of a category together, so a clause cannot be tied to one object;
  visibility (`可见性=部分`) is therefore a clause of its own and makes no other clause pending.
  `组` (group counts) is left out: it is not evidence. Each `备注` remark is a clause without subject.
- Legacy text summaries (×N): split on `;`, `；`, newlines and the full-width `，`; the subject is
  the text before the first `/`, without an RRU group prefix (`组1:`) or a `×N` count.
- `无关图片` has no clauses.

The trigger list is the origin's, with `不符合` (HEAD's form, the value JSON summaries carry)
standing for `不符合要求`, which it also matches. A named issue is looked for first, as the legacy
`不符合要求/<issue>` or the JSON `问题=<issue>`; a bare trigger inside such a match is not counted again.

Mission relevance comes from the mission's rule in config/missions.yaml (docs/missions.md): what
its `fail_conditions` judge. A JSON clause is relevant when a condition judges its category's
attribute (a dataList `属性` as the attribute it stands for), so a shield negative on a BBU设备 entry
fails the shield mission and not the screw mission, which only needs to see a BBU设备. A clause
without an attribute (a remark, a legacy text clause) is relevant when its subject is, or its text
names, a category that a condition judges. Learned guidance (G0 included) does not change relevance.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vlqc.data.summary import IRRELEVANT
from vlqc.inference.answers import strip_summary_header, summary_document, summary_entries
from vlqc.inference.prompts import REASON_MAX_CHARS
from vlqc.missions import MissionRule

TRIGGERS = (
    "未按要求",
    "错误",
    "缺失",
    "松动",
    "损坏",
    "方向不正确",
    "反向",
    "不符合",
    "不合格",
    "不合理",
    "未安装",
    "未配备",
)
NEGATION_PREFIXES = ("未发现明显", "未见明显", "未发现", "未见", "不存在", "没有", "无明显", "无")
QUESTION_MARKERS = ("是否", "能否", "是不是")
QUESTION_WINDOW = 6  # characters before a hit that may hold the question marker
PENDING_PHRASES = ("无法确认", "不能确认", "无法判断", "只显示部分", "模糊", "需复核")
MAX_CITED = 3
CONCLUSION = "总结: 存在与任务相关的明确负面证据"
SEPARATOR = "; "

HARD, PENDING, IRRELEVANT_HIT = "hard", "pending", "irrelevant"
MODEL, GUARDRAIL = "model", "guardrail"

# The issue ends where the origin said (whitespace, commas, semicolons, 。) and also before a legacy `×N` count.
_ISSUE = re.compile(r"(?:不符合要求/|问题=)[^\s,，;；。×]+")
_TRIGGER = re.compile("|".join(map(re.escape, sorted(TRIGGERS, key=len, reverse=True))))
_LEGACY_CLAUSE = re.compile(r"[;；\n，]")
_GROUP_PREFIX = re.compile(r"^组[^:：]*[:：]")
_COUNT_SUFFIX = re.compile(r"×[0-9]+$")


@dataclass(frozen=True)
class Clause:
    text: str
    subject: str | None  # the object type the clause speaks of, when the summary form names one
    key: str | None = None  # the attribute of a JSON summary clause


@dataclass(frozen=True)
class Hit:
    image: int  # 1-based, as `Image<n>` in prompts and reasons
    clause: str
    trigger: str
    kind: str  # HARD | PENDING | IRRELEVANT_HIT


@dataclass(frozen=True)
class GuardrailResult:
    hits: tuple[Hit, ...] = ()

    @property
    def hard_hits(self) -> tuple[Hit, ...]:
        return tuple(hit for hit in self.hits if hit.kind == HARD)

    @property
    def warnings(self) -> tuple[Hit, ...]:
        """Hits that do not force a fail: pending or irrelevant to the mission."""
        return tuple(hit for hit in self.hits if hit.kind != HARD)


# --- clauses ------------------------------------------------------------------------------------


def split_clauses(summary: str) -> list[Clause]:
    """The clauses of one image summary, JSON or legacy text (see the module docstring)."""
    text = strip_summary_header(summary)
    if text == IRRELEVANT:
        return []
    entries = summary_entries(text)
    if entries is None:
        return _legacy_clauses(text)
    return [clause for entry in entries for clause in _entry_clauses(entry)] + _remark_clauses(text)


def _entry_clauses(entry: Any) -> list[Clause]:
    if not isinstance(entry, dict):  # a model-written summary may break the builder's shape
        return [Clause(str(entry), None)]
    category = str(entry.get("类别", ""))
    return [
        Clause(f"{category}{key}={value}", category or None, key)
        for key, values in entry.items()
        if key not in ("类别", "组")
        for value in _values(values)
    ]


def _values(values: Any) -> list[str]:
    # The builder writes {value: count}; anything else a model wrote is read as one or more values.
    if isinstance(values, (dict, list)):
        return [str(value) for value in values]
    return [str(values)]


def _remark_clauses(summary: str) -> list[Clause]:
    remarks = summary_document(summary).get("备注", [])  # a JSON summary: split_clauses checked it
    return [Clause(f"备注:{remark}", None) for remark in _values(remarks)]


def _legacy_clauses(summary: str) -> list[Clause]:
    clauses = []
    for piece in _LEGACY_CLAUSE.split(summary):
        text = piece.strip()
        if text:
            subject = _COUNT_SUFFIX.sub("", _GROUP_PREFIX.sub("", text.split("/", 1)[0])).strip()
            clauses.append(Clause(text, subject or None))
    return clauses


# --- triggers -----------------------------------------------------------------------------------


def find_trigger(text: str) -> str | None:
    """The first trigger that `text` asserts (named issues first), or None."""
    issues = list(_ISSUE.finditer(text))
    for match in issues:
        if _asserted(text, match.start()):
            return match.group()
    for match in _TRIGGER.finditer(text):
        inside_issue = any(issue.start() <= match.start() < issue.end() for issue in issues)
        if not inside_issue and _asserted(text, match.start()):
            return match.group()
    return None


def _asserted(text: str, start: int) -> bool:
    """False when the word at `start` is negated (`未见松动`) or asked about (`是否松动`)."""
    if text[:start].rstrip().endswith(NEGATION_PREFIXES):
        return False
    return not text[max(0, start - QUESTION_WINDOW) : start].rstrip().endswith(QUESTION_MARKERS)


# --- mission relevance --------------------------------------------------------------------------


def is_relevant(clause: Clause, rule: MissionRule) -> bool:
    """Whether the clause speaks of a value the mission's rule judges (see the module docstring)."""
    if clause.key is not None and clause.subject is not None:
        return rule.judges(clause.subject, clause.key)
    return any(category == clause.subject or category in clause.text for category in rule.judged_categories)


# --- scan and apply -----------------------------------------------------------------------------


def scan(per_image: Sequence[str], rule: MissionRule) -> GuardrailResult:
    """Every asserted trigger hit in a ticket's summaries (`image_1..N` in order), classified by
    relevance to the mission's rule."""
    hits = []
    for image, summary in enumerate(per_image, start=1):
        for clause in split_clauses(summary):
            trigger = find_trigger(clause.text)
            if trigger is not None:
                hits.append(Hit(image, clause.text, trigger, _kind(clause, rule)))
    return GuardrailResult(tuple(hits))


def _kind(clause: Clause, rule: MissionRule) -> str:
    if any(phrase in clause.text for phrase in PENDING_PHRASES):
        return PENDING
    return HARD if is_relevant(clause, rule) else IRRELEVANT_HIT


def apply(verdict: str | None, reason: str, result: GuardrailResult) -> tuple[str | None, str, str]:
    """(verdict, reason, source) after the guardrail: a relevant hard hit turns any verdict but
    `fail` into `fail` with a Reason citing the hits (source `guardrail`); otherwise the model's
    answer stands unchanged (source `model`), its own fail Reason included."""
    if not result.hard_hits or verdict == "fail":
        return verdict, reason, MODEL
    return "fail", guardrail_reason(result.hard_hits), GUARDRAIL


def guardrail_reason(hits: Sequence[Hit]) -> str:
    """`Image2: <clause>; …; 总结: …` citing up to three distinct clauses, at most 240 characters."""
    cited = list(dict.fromkeys(f"Image{hit.image}: {hit.clause}" for hit in hits))[:MAX_CITED]
    if not cited:
        raise ValueError("a guardrail reason needs at least one hit")
    budget = (REASON_MAX_CHARS - len(CONCLUSION) - len(SEPARATOR) * len(cited)) // len(cited)
    return SEPARATOR.join([*(_clip(citation, budget) for citation in cited), CONCLUSION])


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
