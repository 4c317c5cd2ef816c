"""Per-object desc strings: the current key=value form and the legacy slash form.

Current (docs/taxonomy.md#desc-keyvalue-form): `类别=BBU安装螺丝,可见性=完整,符合性=符合`: `类别` first, then the
type's keys in KEY_ORDER, then `组` for types that keep groups. Legacy (docs/taxonomy.md#legacy-slash-desc, cc1d856):
`螺丝、光纤插头/BBU安装螺丝,符合要求`: levels joined with `/`, uncompressed values.

A raw answer that no taxonomy choice accepts raises `SampleError("unknown_value")`
rather than being guessed at; the caller drops that one object with the reason.
"""

from __future__ import annotations

import re
import unicodedata

from vlqc.data.objects import RawObject
from vlqc.data.taxonomy import (
    DISTANCE_QUESTIONS,
    KEY_ORDER,
    LABEL_READABLE,
    LABEL_TEXT_QUESTIONS,
    LEGACY_HIERARCHY,
    REMARK_QUESTIONS,
    TYPES,
    Attribute,
    Choice,
    TypeSpec,
    is_negative,
    keeps_groups,
)
from vlqc.errors import SampleError

FREE_TEXT_KEYS = ("备注", "文本")
# Notes from reviewers to annotators, not facts about the photo.
_LEARNING_NOTE = re.compile(r"这里已经帮助修改[,，]请注意参考学习")
NOISE_NOTES = ("请参考学习", "建议看下操作手册中螺丝、插头的标注规范")
# Comma pieces of free text with these are about the annotation, not the object.
DROPPED_MARKERS = ("遮挡", "框选范围")
# OCR answers annotators type when a label cannot be read.
UNREADABLE_TEXTS = ("", "空格", "看不清", "、")
# Legacy review flagger: a remark with one of these makes the slash desc `<type>/需复核,备注:…`.
REVIEW_TOKENS = (
    "无法判断",
    "不确定",
    "疑似",
    "无法框选",
    "无法框全",
    "无法框",
    "无法辨别",
    "无法看",
    "范围过小",
    "角度问题",
    "拍摄角度",
    "未拍",
    "未显示",
    "无品牌",
    "品牌不完整",
    "未体现品牌",
    "无显示品牌",
    "显示小部分",
    "只显示部分",
    "不完整",
    "空间有限",
    "位置错误",
    "应该",
    "推测",
    "判断",
    "缺少",
    "缺失",
    "不全",
    "损坏",
    "部分未",
    "部分无",
    "部分没有",
    "未套",
    "不是常见",
    "建议",
    "背面",
    "不能确认",
    "不能判断",
    "不能确定",
    "无法确定",
)

_WHITESPACE = re.compile(r"\s+")
_COMMA_RUN = re.compile(r"[,，]{2,}")
_DIGITS = re.compile(r"[0-9]+")
_ESCAPE_STRUCTURED = str.maketrans({",": "，", "|": "｜", "=": "＝"})
# Free text keeps its commas (parse_desc folds them back); `=` and `|` would break parsing.
_ESCAPE_FREE = str.maketrans({"|": "｜", "=": "＝"})


def normalize(text: str) -> str:
    """NFKC with all whitespace removed: the form raw answers are compared in."""
    return _WHITESPACE.sub("", unicodedata.normalize("NFKC", text))


def structured_value(text: str) -> str:
    """A structured desc value: normalized, with the desc separators made full-width."""
    return normalize(text).translate(_ESCAPE_STRUCTURED)


def clean_free_text(text: str) -> str:
    """Free text (备注, OCR): whitespace and annotator notes removed, comma runs collapsed,
    and comma pieces mentioning occlusion or the box extent dropped."""
    text = _WHITESPACE.sub("", text)
    text = _LEARNING_NOTE.sub(",", text)
    for note in NOISE_NOTES:
        text = text.replace(note, "")
    text = _COMMA_RUN.sub(",", text).strip(",，")
    pieces = [p for p in text.split(",") if p and not any(m in p for m in DROPPED_MARKERS)]
    return ",".join(pieces)


def group_sort_key(group_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, any other token after them."""
    if group_id.isascii() and group_id.isdigit():
        return (0, int(group_id), "")
    return (1, 0, group_id)


# --- reading answers -------------------------------------------------------------------


def _items(value: object) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [str(item) for item in items if item is not None]


def _answers(content_zh: dict, questions: tuple[str, ...]) -> list[str]:
    """Normalized non-empty answers to any of the questions, in question order."""
    answers = (normalize(item) for q in questions for item in _items(content_zh.get(q)))
    return [a for a in answers if a]


def _match(spec: TypeSpec, attr: Attribute, answer: str) -> tuple[Choice, str]:
    """The choice an answer selects, and its sub-answer (the text after `/`).

    Exact match first. Otherwise the longest choice the answer starts with, followed by `/`
    (or `,`) and a sub-answer, and only a choice that has a conditional child takes one. So
    `不符合要求/露铜` can never land on 符合要求, and `没有标签` never on 标签.
    """
    parents = {c.parent[1] for c in spec.attributes if c.parent and c.parent[0] == attr.key}
    best: tuple[Choice, str] | None = None
    for choice in attr.choices:
        head = normalize(choice.raw)
        if answer == head:
            return choice, ""
        rest = answer[len(head) :]
        if answer.startswith(head) and rest[0] in "/," and choice.value in parents:
            if best is None or len(head) > len(normalize(best[0].raw)):
                best = (choice, rest.lstrip("/,"))
    if best is None:
        raise SampleError("unknown_value", f"{spec.key}: {attr.key} has unknown answer {answer!r}")
    return best


def _select(spec: TypeSpec, attr: Attribute, answers: list[str]) -> tuple[list[Choice], dict[str, list[str]]]:
    """Choices for one attribute (deduplicated; negatives win) and sub-answers by value."""
    chosen: list[Choice] = []
    tails: dict[str, list[str]] = {}
    for answer in answers:
        choice, tail = _match(spec, attr, answer)
        if choice not in chosen:
            chosen.append(choice)
        if tail:
            tails.setdefault(choice.value, []).append(tail)
    negatives = [c for c in chosen if is_negative(c.value)]
    return negatives or chosen, tails


def _pick(spec: TypeSpec, content_zh: dict) -> dict[str, list[Choice]]:
    """Chosen values of every structured attribute present, conditional children included."""
    picked: dict[str, list[Choice]] = {}
    tails: dict[tuple[str, str], list[str]] = {}
    for attr in spec.attributes:
        if attr.parent is None:
            answers = _answers(content_zh, attr.questions)
        elif attr.parent[1] in (c.value for c in picked.get(attr.parent[0], ())):
            answers = tails.get(attr.parent, [])
            if attr.multi:
                answers = [part for a in answers for part in re.split(r"[,，]", a) if part]
        else:
            continue
        chosen, attr_tails = _select(spec, attr, answers)
        if chosen:
            picked[attr.key] = chosen
        for value, texts in attr_tails.items():
            tails[(attr.key, value)] = texts
    return picked


def _subtype(spec: TypeSpec, content_zh: dict) -> Choice | None:
    if spec.subtype is None:
        return None
    chosen, _ = _select(spec, spec.subtype, _answers(content_zh, spec.subtype.questions))
    if len(chosen) > 1:
        names = ", ".join(c.value for c in chosen)
        raise SampleError("ambiguous_category", f"{spec.key}: several subtypes ({names})")
    return chosen[0] if chosen else None


def _free_text(content_zh: dict, questions: tuple[str, ...]) -> str:
    texts = (clean_free_text(item) for q in questions for item in _items(content_zh.get(q)))
    return clean_free_text(",".join(t for t in texts if t))


def _label_reading(spec: TypeSpec, content_zh: dict) -> tuple[bool, str]:
    """Whether the annotator could read the label, and its OCR text ('' when unreadable)."""
    chosen, _ = _select(spec, LABEL_READABLE, _answers(content_zh, LABEL_READABLE.questions))
    if any(c.value == "不可读" for c in chosen):
        return False, ""
    # The alternates repeat the first answered question; they are not extra text.
    for question in LABEL_TEXT_QUESTIONS:
        text = _free_text(content_zh, (question,))
        if text:
            return True, "" if text in UNREADABLE_TEXTS else text
    return True, ""


def _distance(content_zh: dict) -> str | None:
    """First run of digits of the station distance answer."""
    answers = _answers(content_zh, DISTANCE_QUESTIONS)
    if not answers:
        return None
    digits = _DIGITS.search(answers[0])
    if digits is None:
        raise SampleError("unknown_value", f"station: 距离 has no number in {answers[0]!r}")
    return digits.group()


def _groups(obj: RawObject) -> list[str]:
    if obj.type_key is None or not keeps_groups(obj.type_key):
        return []
    return sorted(set(obj.groups), key=group_sort_key)


# --- dataList (legacy export) objects --------------------------------------------------


def _datalist_parts(obj: RawObject) -> tuple[str, str, str]:
    """Type, property and remark of a dataList object, filtered by LEGACY_HIERARCHY
    (docs/export-format.md#datalist-variant)."""
    if obj.legacy_label is None:
        raise SampleError("unknown_category", "object has neither a type key nor a 标签 text")
    parts = obj.legacy_label.split("/")
    category = structured_value(parts[0])
    prop = structured_value(parts[1]) if len(parts) > 1 else ""
    if category not in LEGACY_HIERARCHY:
        raise SampleError("unknown_category", f"dataList type {category!r} is not one of {sorted(LEGACY_HIERARCHY)}")
    if prop not in LEGACY_HIERARCHY[category]:
        allowed = " / ".join(p or "<empty>" for p in LEGACY_HIERARCHY[category])
        raise SampleError("unknown_property", f"dataList {category} property {prop!r} is not {allowed}")
    extra = [p for p in (*parts[2:], *obj.legacy_extra) if p.strip()]
    return category, prop, clean_free_text("/".join(extra))


# --- current key=value desc ------------------------------------------------------------


def build_desc(obj: RawObject) -> str:
    """The key=value desc of one object (docs/taxonomy.md#desc-keyvalue-form;
    dataList objects per docs/export-format.md#datalist-variant)."""
    if obj.type_key is None:
        category, prop, remark = _datalist_parts(obj)
        pairs = [("类别", category), ("属性", prop), ("备注", remark.translate(_ESCAPE_FREE))]
        return _render(pairs)

    spec = TYPES[obj.type_key]
    content = obj.content_zh
    subtype = _subtype(spec, content)
    fields = {key: "|".join(structured_value(c.value) for c in chosen) for key, chosen in _pick(spec, content).items()}
    if spec.remark:
        fields["备注"] = _free_text(content, REMARK_QUESTIONS).translate(_ESCAPE_FREE)
    if spec.ocr:
        _, text = _label_reading(spec, content)
        fields.update({"文本": text.translate(_ESCAPE_FREE)} if text else {"可读性": "不可读"})
    if spec.distance:
        fields["站点距离"] = _distance(content) or ""

    category = subtype.value if subtype else spec.category
    pairs = [("类别", category), *((key, fields.get(key, "")) for key in KEY_ORDER[spec.key])]
    pairs.append(("组", "|".join(_groups(obj))))
    return _render(pairs)


def _render(pairs: list[tuple[str, str]]) -> str:
    return ",".join(f"{key}={value}" for key, value in pairs if value)


# --- legacy slash desc -----------------------------------------------------------------


def build_legacy_desc(obj: RawObject) -> str:
    """The cc1d856 slash-form desc of one object (docs/taxonomy.md#legacy-slash-desc), review flagger applied."""
    if obj.type_key is None:
        category, prop, remark = _datalist_parts(obj)
        return _with_remark(category, f"{category}/{prop}" if prop else category, remark)

    spec = TYPES[obj.type_key]
    content = obj.content_zh
    groups = _groups(obj)
    head = (",".join(f"组{g}" for g in groups) + ":" if groups else "") + spec.category
    if spec.ocr:
        readable, text = _label_reading(spec, content)
        return f"{head}/{text or ('无法识别' if readable else '不能')}"
    if spec.distance:
        distance = _distance(content)
        return f"{head}/{distance}" if distance else head

    levels: dict[int, list[str]] = {}
    subtype = _subtype(spec, content)
    if subtype:
        levels[1] = [subtype.legacy]
    picked = _pick(spec, content)
    for attr in sorted(spec.attributes, key=lambda a: a.level):
        if attr.key in picked and attr.key not in spec.legacy_skip:
            levels.setdefault(attr.level, []).extend(c.legacy for c in picked[attr.key])
    body = "/".join([head, *(",".join(levels[level]) for level in sorted(levels))])
    remark = _free_text(content, REMARK_QUESTIONS) if spec.remark else ""
    return _with_remark(head, body, remark)


def _with_remark(head: str, body: str, remark: str) -> str:
    """Fold the remark in as `,备注:`; an uncertain remark replaces the body by 需复核."""
    if not remark:
        return body
    if any(token in remark for token in REVIEW_TOKENS):
        return f"{head}/需复核,备注:{remark}"
    return f"{body},备注:{remark}"


# --- parsing ---------------------------------------------------------------------------


def parse_desc(desc: str) -> dict[str, list[str]]:
    """Split a key=value desc into `{key: [values]}` (values split on `|`, except 备注).

    A comma token without `=` is free text: it continues the 备注/文本 value it follows,
    or else is appended to the last 备注 (a new one at the end if there is none).
    Raises `SampleError("empty_value")` for a token with an empty key or value.
    """
    pairs: list[list[str]] = []
    strays: list[str] = []
    for token in desc.split(","):
        token = token.strip()
        if not token:
            continue
        if "=" in token:
            key, value = (part.strip() for part in token.split("=", 1))
            if not key or not value:
                raise SampleError("empty_value", f"desc {desc!r}: empty key or value in {token!r}")
            pairs.append([key, value])
        elif pairs and pairs[-1][0] in FREE_TEXT_KEYS:
            pairs[-1][1] += "," + token
        else:
            strays.append(token)
    if strays:
        remark = next((pair for pair in reversed(pairs) if pair[0] == "备注"), None)
        if remark is None:
            pairs.append(["备注", ",".join(strays)])
        else:
            remark[1] += "," + ",".join(strays)

    fields: dict[str, list[str]] = {}
    for key, value in pairs:
        values = [value] if key == "备注" else value.split("|")
        if "" in values:
            raise SampleError("empty_value", f"desc {desc!r}: {key} has an empty value")
        bucket = fields.setdefault(key, [])
        bucket.extend(v for v in values if v not in bucket)
    return fields
