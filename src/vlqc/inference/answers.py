"""The one module that decodes model text (docs/answers.md): dense object lists, summaries, verdicts and
the JSON answers of the reflection passes. Nothing else in `src/` calls `json.loads` on what a model wrote
(tests/test_answer_inventory.py keeps it that way).

Dense answers (docs/answers.md#the-dense-answer): a `<DOMAIN=BBU>, <TASK=DETECTION>` line, then one JSON
object `{"object_1": {...}, "object_2": {...}}` whose values are `{"bbox_2d": [x1, y1, x2, y2], "desc": …}`,
`{"poly": [...], "poly_points": N, "desc": …}` or `{"line": [...], "line_points": N, "desc": …}`, norm1000
integers. The list form `[{"bbox_2d": [...], "desc": …}, …]` of earlier vlqc versions is read too.

- `parse_dense(text)` (strict) returns the objects of an answer that keeps every rule, or raises
  `AnswerError` whose `rule` names the first rule broken (docs/answers.md#strict-rules).
- `parse_dense(text, strict=False)` (salvage) never raises: it returns every complete object that keeps
  the object rules, and a `Dropped` record with a reason code for each object or piece of text it could
  not keep (docs/answers.md#salvage-and-reason-codes). A clean answer salvages to what strict returns
  and no drops. Salvage also gives where each kept object stands in `text` (`DenseAnswer.spans`), so a
  caller can rebuild an answer around the model's own text (Stage-2 channel B, vlqc.train.stage2.sequence).

Also here: `strip_summary_header`, the summary readers (`summary_document`, `summary_entries`;
docs/summary-format.md), the verdict parser (`parse_verdict`; docs/verdict.md#parsing) and
`decode_json_answer`, the strict JSON decoding of reflection answers (docs/guidance.md#reflection).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vlqc.data.desc import parse_desc
from vlqc.data.objects import GEOMETRY_KINDS
from vlqc.data.summary import IRRELEVANT
from vlqc.data.taxonomy import BBU, RRU, categories
from vlqc.errors import SampleError, VlqcError

DENSE_TASK = "DETECTION"
COORD_MAX = 1000  # norm1000: integers 0..1000
# The count field that must equal the number of points of a poly or a line.
COUNT_FIELDS = {"poly": "poly_points", "line": "line_points"}
# Fewest points of a usable geometry: a box is exactly 2 corners, a polygon needs an area, a line a length.
MIN_POINTS = {"bbox_2d": 2, "poly": 3, "line": 2}
# Salvage reason of each strict object rule (docs/answers.md#salvage-and-reason-codes).
OBJECT_REASONS = {
    "object": "not_an_object",
    "geometry_kind": "bad_geometry",
    "coordinates": "bad_geometry",
    "int_range": "bad_geometry",
    "min_points": "bad_geometry",
    "bbox_order": "bad_geometry",
    "point_count": "bad_geometry",
    "fields": "extra_field",
    "desc": "bad_desc",
    "category": "unknown_category",
}

# `<DOMAIN=…>, <TASK=…>` on its own first line (full-width comma and spaces tolerated).
_HEADER = re.compile(r"^\s*<DOMAIN=([^>\n]*)>\s*[,，]\s*<TASK=([^>\n]*)>[ \t]*(?:\r?\n|$)")
_FENCE = re.compile(r"^```(?:json|JSON)?\s*(.*?)\s*```$", re.DOTALL)
_FENCE_OPEN = re.compile(r"^```(?:json|JSON)?\s*")
_FENCE_CLOSE = re.compile(r"\s*```$")
_OBJECT_KEY = re.compile(r"object_[1-9][0-9]*")
# Where salvage picks up again after a malformed piece: the next key, or the next list item.
_NEXT_KEY = re.compile(r',\s*"object_[0-9]+"\s*:')
_NEXT_ITEM = re.compile(r",\s*\{")
_WHITESPACE = re.compile(r"\s*")


class AnswerError(VlqcError):
    """A model answer breaks its contract; `rule` names the rule (stable, machine-readable)."""

    def __init__(self, rule: str, message: str):
        self.rule = rule
        self.message = message
        super().__init__(f"{message} [{rule}]")

    def __reduce__(self):
        return (type(self), (self.rule, self.message))


@dataclass(frozen=True)
class DenseObject:
    kind: str  # "bbox_2d" | "poly" | "line"
    points: tuple[int, ...]  # flat norm1000 ints [x1, y1, x2, y2, ...]
    desc: str


@dataclass(frozen=True)
class Dropped:
    where: str  # "object_3", or "answer" for the text as a whole
    reason: str  # truncated | bad_json | extra_text | bad_key | not_an_object | bad_geometry | extra_field | …
    detail: str


@dataclass(frozen=True)
class DenseAnswer:
    domain: str | None  # from the header line; None when absent (or, in salvage, unreadable)
    objects: tuple[DenseObject, ...]
    dropped: tuple[Dropped, ...]  # empty for a clean answer
    # Salvage only (strict leaves it empty): one (key_start, value_start, value_end) per object, character
    # offsets into the text given to parse_dense (header included); key_start is the key's opening quote
    # (value_start in the list form), value_end is just past the value's closing brace. Positions, not
    # content: two answers with the same objects compare equal wherever they stand.
    spans: tuple[tuple[int, int, int], ...] = field(default=(), compare=False)


# --- headers ------------------------------------------------------------------------------------


def strip_summary_header(text: str) -> str:
    """Model output without a leading `<DOMAIN=…>, <TASK=…>` line, whitespace trimmed ('' if nothing is left)."""
    return _HEADER.sub("", text, count=1).strip()


def _dense_header(text: str, strict: bool) -> tuple[str | None, str, int]:
    """The header's domain, the text after the header line (whitespace trimmed) and where that text starts."""
    match = _HEADER.match(text)
    if match is None:
        if strict:
            raise AnswerError("header", f"the first line must be <DOMAIN=BBU|RRU>, <TASK={DENSE_TASK}>: {text[:60]!r}")
        return None, text.strip(), len(text) - len(text.lstrip())
    domain, task = match.group(1).strip(), match.group(2).strip()
    if strict and (domain not in (BBU, RRU) or task != DENSE_TASK):
        found = match.group(0).strip()
        raise AnswerError("header", f"header must be <DOMAIN=BBU|RRU>, <TASK={DENSE_TASK}>, not {found!r}")
    rest = text[match.end() :]
    start = match.end() + len(rest) - len(rest.lstrip())
    return (domain.upper() if domain.upper() in (BBU, RRU) else None), rest.strip(), start


# --- dense objects ------------------------------------------------------------------------------


class _Broken(Exception):
    """One object breaks a rule: strict raises it as AnswerError, salvage drops the object."""

    def __init__(self, rule: str, detail: str):
        super().__init__(detail)
        self.rule, self.detail = rule, detail


class _Object(dict):
    """A decoded JSON object that remembers its keys in order, repeats included (a dict keeps the last)."""

    def __init__(self, pairs: list[tuple[str, Any]]):
        super().__init__(pairs)
        self.names = [key for key, _ in pairs]


_DECODER = json.JSONDecoder(object_pairs_hook=_Object)


def _allowed_categories(domain: str | None) -> frozenset[str]:
    return categories(domain) if domain else categories(BBU) | categories(RRU)


def _dense_object(value: Any, counted: bool, allowed: frozenset[str]) -> DenseObject:
    """One object of an answer; `counted`: the object format, whose polys and lines carry their point count."""
    if not isinstance(value, dict):
        raise _Broken("object", f"not a JSON object but {type(value).__name__}")
    names = value.names if isinstance(value, _Object) else list(value)
    if repeated := sorted(name for name, n in Counter(names).items() if n > 1):
        raise _Broken("fields", f"repeated fields: {', '.join(repeated)}")
    kinds = [kind for kind in GEOMETRY_KINDS if kind in value]
    if len(kinds) != 1:
        raise _Broken("geometry_kind", f"needs exactly one of {', '.join(GEOMETRY_KINDS)}, has {kinds or 'none'}")
    kind = kinds[0]
    count_field = COUNT_FIELDS.get(kind) if counted else None
    if extra := sorted(set(value) - {kind, "desc", count_field}):
        raise _Broken("fields", f"fields not in the contract: {', '.join(extra)}")
    points = _points(kind, value[kind])
    if count_field is not None:
        count = value.get(count_field)
        if type(count) is not int or count != len(points) // 2:
            raise _Broken("point_count", f"{count_field} is {count!r}, the {kind} has {len(points) // 2} points")
    return DenseObject(kind, points, _desc(value.get("desc"), allowed))


def _points(kind: str, coords: Any) -> tuple[int, ...]:
    # type() and not isinstance(): true/false are ints to Python but not coordinates.
    if not isinstance(coords, list) or any(type(v) is not int for v in coords):
        raise _Broken("coordinates", f"{kind} must be a flat list of integers, not {json.dumps(coords)[:60]}")
    if len(coords) % 2:
        raise _Broken("coordinates", f"{kind} has an odd number of values ({len(coords)})")
    if kind == "bbox_2d" and len(coords) not in (0, 4):
        raise _Broken("coordinates", f"bbox_2d needs 4 values, has {len(coords)}")
    if len(coords) // 2 < MIN_POINTS[kind]:
        raise _Broken("min_points", f"{kind} needs at least {MIN_POINTS[kind]} points, has {len(coords) // 2}")
    if any(v < 0 or v > COORD_MAX for v in coords):
        raise _Broken("int_range", f"{kind} values must be 0..{COORD_MAX}: {coords}")
    if kind == "bbox_2d" and (coords[0] > coords[2] or coords[1] > coords[3]):
        raise _Broken("bbox_order", f"bbox_2d needs x1 <= x2 and y1 <= y2: {coords}")
    return tuple(coords)


def _desc(desc: Any, allowed: frozenset[str]) -> str:
    if not isinstance(desc, str) or not desc.startswith("类别=") or "\n" in desc:
        raise _Broken("desc", f"desc must be one line starting with 类别=, not {desc!r}")
    try:
        fields = parse_desc(desc)
    except SampleError as exc:
        raise _Broken("desc", exc.message) from None
    category = fields["类别"]
    if len(category) != 1:
        raise _Broken("desc", f"desc {desc!r} has several 类别")
    if category[0] not in allowed:
        raise _Broken("category", f"unknown 类别 {category[0]!r}")
    return desc


def parse_dense(text: str, *, strict: bool = True) -> DenseAnswer:
    """The objects of a dense answer; strict raises `AnswerError`, salvage (`strict=False`) never raises."""
    domain, body, start = _dense_header(text, strict)
    allowed = _allowed_categories(domain)
    if strict:
        return DenseAnswer(domain, _strict_objects(body, allowed), ())
    salvage = _Salvage(body, start, allowed)
    salvage.run()
    return DenseAnswer(domain, tuple(salvage.objects), tuple(salvage.dropped), tuple(salvage.spans))


def _strict_objects(body: str, allowed: frozenset[str]) -> tuple[DenseObject, ...]:
    try:
        doc = json.loads(body, object_pairs_hook=_Object)
    except json.JSONDecodeError as exc:
        raise AnswerError(
            "json", f"the answer after the header is not one JSON value: {exc.msg} (char {exc.pos})"
        ) from None
    if isinstance(doc, list):  # the list form of earlier vlqc versions
        items = [(f"object_{n}", value, False) for n, value in enumerate(doc, 1)]
    elif isinstance(doc, dict):
        expected = [f"object_{n}" for n in range(1, len(doc.names) + 1)]
        if doc.names != expected:
            raise AnswerError("keys", f"keys must be object_1..object_{len(expected)} in order, not {doc.names[:8]}")
        items = [(key, doc[key], True) for key in expected]
    else:
        raise AnswerError("top_level", f"the answer must be a JSON object (or list), not {type(doc).__name__}")
    objects = []
    for where, value, counted in items:
        try:
            objects.append(_dense_object(value, counted, allowed))
        except _Broken as exc:
            raise AnswerError(exc.rule, f"{where}: {exc.detail}") from None
    return tuple(objects)


def _ends_inside(exc: json.JSONDecodeError) -> bool:
    """The decoder ran out of text (a cut answer) rather than meeting a wrong character."""
    return exc.pos >= len(exc.doc) or exc.msg.startswith("Unterminated string")


def _cut_header(text: str) -> bool:
    """Nothing, or a header line that stops before its end."""
    return "\n" not in text and (text.startswith("<DOMAIN=") or "<DOMAIN=".startswith(text))


class _Salvage:
    """Walks the top-level object (or list) one member at a time with `raw_decode`, so a cut or malformed
    member loses only itself: what precedes it is kept, and after a malformed one the walk resumes at the
    next `"object_<n>":` key (next `{` item of a list). `start`: where `body` stands in the parsed text,
    so the spans of the kept objects are offsets into that text."""

    def __init__(self, body: str, start: int, allowed: frozenset[str]):
        self.body, self.start, self.allowed = body, start, allowed
        self.objects: list[DenseObject] = []
        self.dropped: list[Dropped] = []
        self.spans: list[tuple[int, int, int]] = []

    def drop(self, where: str, reason: str, detail: str) -> None:
        self.dropped.append(Dropped(where, reason, detail))

    def skip(self, pos: int) -> int:
        return _WHITESPACE.match(self.body, pos).end()

    def run(self) -> None:
        # A ```json fence is no loss, closed or (in a cut answer) not.
        fence = opened.end() if (opened := _FENCE_OPEN.match(self.body)) else 0
        self.start += fence
        body = self.body = _FENCE_CLOSE.sub("", self.body[fence:], count=1)
        start = min((i for i in (body.find("{"), body.find("[")) if i >= 0), default=-1)
        if start < 0:
            if _cut_header(body):
                self.drop("answer", "truncated", "the answer ends before its JSON starts")
            else:
                self.drop("answer", "bad_json", f"no JSON object or list: {body[:60]!r}")
            return
        if start:
            self.drop("answer", "extra_text", f"text before the JSON: {body[:start][:60]!r}")
        end = self.members(start, body[start] == "{")
        if end is not None and (rest := body[end:].strip()):
            self.drop("answer", "extra_text", f"text after the JSON: {rest[:60]!r}")

    def members(self, start: int, keyed: bool) -> int | None:
        """Reads the members after `{`/`[` at `start`; the end of the closing bracket, or None when cut."""
        body, close = self.body, "}" if keyed else "]"
        pos = self.skip(start + 1)
        if body.startswith(close, pos):
            return pos + 1
        n = 0
        while True:
            n += 1
            where = f"object_{n}"
            key_start = pos
            try:
                if keyed:
                    where, pos = self.key(pos)
                value_start = pos
                value, pos = _DECODER.raw_decode(body, pos)
            except json.JSONDecodeError as exc:
                if _ends_inside(exc):
                    self.drop(where, "truncated", f"the answer ends inside {where}")
                    return None
                resume = self.resume(exc.pos, keyed, where, f"{exc.msg} (char {exc.pos})")
                if resume is None:
                    return None
                pos = resume
                continue
            if self.keep(where, value, keyed):
                self.spans.append((self.start + key_start, self.start + value_start, self.start + pos))
            pos = self.skip(pos)
            if pos == len(body):
                self.drop("answer", "truncated", f"the answer ends before its closing {close}")
                return None
            if body[pos] == close:
                return pos + 1
            if body[pos] == ",":
                pos = self.skip(pos + 1)
                if pos == len(body):
                    self.drop("answer", "truncated", f"the answer ends before its closing {close}")
                    return None
                continue
            resume = self.resume(pos, keyed, "answer", f"expected ',' or '{close}' (char {pos})")
            if resume is None:
                return None
            pos = resume

    def key(self, pos: int) -> tuple[str, int]:
        """An object member's key and the position of its value."""
        body = self.body
        key, pos = _DECODER.raw_decode(body, pos)
        if not isinstance(key, str):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", body, pos)
        pos = self.skip(pos)
        if not body.startswith(":", pos):
            raise json.JSONDecodeError("Expecting ':' delimiter", body, pos)
        return key, self.skip(pos + 1)

    def resume(self, pos: int, keyed: bool, where: str, detail: str) -> int | None:
        """Drops the malformed piece at `pos`; where the next member starts, or None when none follows."""
        self.drop(where, "bad_json", detail)
        match = (_NEXT_KEY if keyed else _NEXT_ITEM).search(self.body, pos)
        return None if match is None else self.skip(match.start() + 1)

    def keep(self, where: str, value: Any, keyed: bool) -> bool:
        """Keeps the object or drops it with its reason; whether it was kept."""
        if keyed and not _OBJECT_KEY.fullmatch(where):
            self.drop(where, "bad_key", f"key {where!r} is not object_<n>")
            return False
        try:
            self.objects.append(_dense_object(value, keyed, self.allowed))
        except _Broken as exc:
            self.drop(where, OBJECT_REASONS[exc.rule], exc.detail)
            return False
        return True


# --- summaries ----------------------------------------------------------------------------------


def summary_document(summary: str) -> dict[str, Any] | None:
    """A JSON summary line as its object (docs/summary-format.md#json-summary) when it has a `统计` list;
    None for anything else (`无关图片`, a legacy ×N string, broken JSON)."""
    try:
        doc = json.loads(summary)
    except json.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("统计"), list):
        return None
    return doc


def summary_entries(summary: str) -> list[dict[str, Any]] | None:
    """The `统计` entries of a JSON summary; [] for `无关图片`; None for a legacy ×N string."""
    if summary == IRRELEVANT:
        return []
    doc = summary_document(summary)
    return None if doc is None else doc["统计"]


# --- verdicts (docs/verdict.md#the-two-line-contract) --------------------------------------------

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
    """The strict two-line verdict: `Verdict: 通过|不通过` and `Reason: …`. Anything else is an invalid
    candidate whose error code says why (docs/verdict.md#parsing); Stage-B drops it from the vote."""
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


# --- JSON answers of the reflection passes ------------------------------------------------------


def decode_json_answer(text: str) -> Any:
    """The one JSON value an answer consists of, optionally inside one ```json fence (whitespace around it
    allowed). Raises `AnswerError` `not_json` (not one JSON value, or text around it) or `duplicate_field`
    (an object repeats a key, which json would silently resolve to the last one)."""
    body = text.strip()
    if fence := _FENCE.match(body):
        body = fence.group(1)
    try:
        return json.loads(body, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise AnswerError("not_json", f"not one JSON value: {exc.msg} (char {exc.pos})") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    counts = Counter(key for key, _ in pairs)
    if repeated := sorted(key for key, n in counts.items() if n > 1):
        raise AnswerError("duplicate_field", f"repeated fields: {', '.join(repeated)}")
    return dict(pairs)
