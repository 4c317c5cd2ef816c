"""The mission table (config/missions.yaml) and the one evaluator of its rules (docs/missions.md).

A mission entry holds its `domain`, its `focus` (prose for the prompts and Stage-B's G0), and its
rule: `must_see` (evidence the photos must show between them) and `fail_conditions` (object values
that fail the ticket). `load_missions` reads the file, checks it against its schema and checks each
rule against the mission's taxonomy; `MissionRule.of` builds a rule from an entry. The demo
labeller, the SFT verdict targets and the Stage-B guardrail all judge by it.

`MissionRule.evaluate` judges a ticket from the union of its photos. Per photo it takes a list of
entries, each either
- one object's attributes, as the demo plans them: `{"类别": c, key: "v"}` (`"v1|v2"` for several), or
- a JSON summary's `统计` entry, counting the objects of one category: `{"类别": c, key: {v: count}}`
  (docs/summary-format.md),
or None for a photo whose summary cannot be read (a legacy ×N string). A dataList entry
(`{"类别": c, "属性": {...}}`) knows one attribute only; the others are unknown, not absent.

The outcome is `fail` when a fail condition hits an entry, or when must-see evidence is in no photo;
`pass` when neither and everything the rule reads was known; None (undecidable) otherwise. A hit
decides a fail even when other photos are unknown; missing evidence does not, since an unreadable
photo may hold it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vlqc.data.taxonomy import LABEL_READABLE, LEGACY_HIERARCHY, TYPES
from vlqc.errors import SchemaError
from vlqc.inference.answers import strip_summary_header, summary_entries
from vlqc.inference.prompts import category_count
from vlqc.schemas import check

PASS, FAIL = "pass", "fail"
TESTS = ("equals", "prefix", "any_value", "not_equals")
LEGACY_PROPERTY = "属性"
LEGACY_CONNECT_POINT = TYPES["connect_point"].category  # its dataList 属性 is the subtype, i.e. the category
# The attribute a dataList object's one property stands for (docs/taxonomy.md, dataList objects): the one
# of its type whose values the taxonomy's LEGACY_HIERARCHY lists for that category.
LEGACY_ATTRIBUTE = {
    spec.category: attribute.key
    for spec in TYPES.values()
    for attribute in spec.attributes
    if set(LEGACY_HIERARCHY.get(spec.category, ())) & {choice.value for choice in attribute.choices}
}
NOT_ATTRIBUTES = ("类别", "组")  # keys of a 统计 entry that hold no object attribute

Photo = Sequence[Mapping[str, Any]] | None


def load_missions(path: str | Path) -> dict[str, dict]:
    """Mission name → {domain, focus, must_see, fail_conditions}; errors name the file and mission."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SchemaError(f"cannot read missions file {path}: {exc}") from exc
    check(doc, "missions", str(path))
    for name, entry in doc.items():
        MissionRule.of(name, entry, where=str(path))
    return doc


def mission_rules(missions: Mapping[str, Mapping[str, Any]]) -> dict[str, MissionRule]:
    """The rule of every mission of a table read by `load_missions`."""
    return {name: MissionRule.of(name, entry) for name, entry in missions.items()}


# --- entries ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A photo's objects of one category: how many, and how often each attribute value occurs."""

    category: str
    count: int
    values: Mapping[str, Mapping[str, int]]
    written: Mapping[str, str]  # attribute → the key the input used for it (a dataList 属性)
    partial: bool = False  # dataList: attributes missing from `values` are unknown, not absent

    def knows(self, attribute: str) -> bool:
        return attribute in self.values or not self.partial

    def key(self, attribute: str) -> str:
        return self.written.get(attribute, attribute)


def _counts(values: Any) -> dict[str, int]:
    if isinstance(values, Mapping):  # a 统计 entry: {value: count}
        return {str(v): int(n) for v, n in values.items()}
    if isinstance(values, list):
        return {str(v): 1 for v in values}
    return {part: 1 for part in str(values).split("|") if part}  # one object: "v" or "v1|v2"


def entries(photo: Sequence[Mapping[str, Any]]) -> list[Entry]:
    """A photo's objects or `统计` entries as `Entry`s; a dataList connect point becomes its subtypes."""
    out = []
    for raw in photo:
        category = str(raw.get("类别", ""))
        values = {key: _counts(v) for key, v in raw.items() if key not in NOT_ATTRIBUTES}
        if LEGACY_PROPERTY not in values:
            out.append(Entry(category, category_count(raw), values, {}))
            continue
        prop = values.pop(LEGACY_PROPERTY)
        if category == LEGACY_CONNECT_POINT:
            out += [Entry(subtype, n, {}, {}, partial=True) for subtype, n in prop.items()]
            continue
        attribute = LEGACY_ATTRIBUTE.get(category)
        written = {}
        if attribute:
            values[attribute], written[attribute] = prop, LEGACY_PROPERTY
        out.append(Entry(category, category_count(raw), values, written, partial=True))
    return out


def summary_photos(summaries: Sequence[str]) -> list[list[dict[str, Any]] | None]:
    """Per summary (JSON, `无关图片`, or legacy ×N, with or without the header line) its `统计`
    entries, or None where they cannot be read."""
    return [summary_entries(strip_summary_header(s)) for s in summaries]


# --- rules ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """A `must_see` item: an object of `category` (having `attribute`, when given) in some photo."""

    category: str
    attribute: str | None
    name: str

    def found(self, entry: Entry) -> bool | None:
        if entry.category != self.category:
            return False
        if self.attribute is None or self.attribute in entry.values:
            return True
        return None if entry.partial else False

    def describe(self) -> str:
        base = f"有{self.attribute}的{self.category}" if self.attribute else self.category
        return base if self.name == self.category else f"{self.name}（{base}）"


@dataclass(frozen=True)
class Condition:
    """A `fail_conditions` item. equals / prefix / any_value: an object with such a value fails the
    ticket (no value never does). not_equals: every object in scope (the category, or its objects
    with `where`'s value) must have `value`; another value or none fails the ticket."""

    category: str
    attribute: str
    test: str
    value: str | None  # None for any_value
    where: tuple[str, str] | None = None

    @property
    def reads(self) -> tuple[str, ...]:
        """The attributes it needs to know: the scope's first."""
        return (self.where[0], self.attribute) if self.where else (self.attribute,)

    def bad(self, value: str) -> bool:
        if self.test == "equals":
            return value == self.value
        if self.test == "prefix":
            return value.startswith(self.value or "")
        return self.test == "any_value"

    def check(self, entry: Entry) -> list[str] | None:
        """`key=value` clauses of what fails in `entry` ([] when nothing), None when the entry cannot tell."""
        if self.test != "not_equals":
            if not entry.knows(self.attribute):
                return None
            return [f"{entry.key(self.attribute)}={v}" for v in entry.values.get(self.attribute, {}) if self.bad(v)]
        if self.where is None:
            scope = entry.count
        elif not entry.knows(self.where[0]):
            return None
        else:
            scope = entry.values.get(self.where[0], {}).get(self.where[1], 0)
        if scope == 0:
            return []
        if not entry.knows(self.attribute):
            return None
        values = entry.values.get(self.attribute, {})
        # Entries count objects per category, so compare counts: exact when the attribute is given
        # only for objects in scope (挡风板符合性 only where 挡风板需求=空间充足需安装).
        if values.get(self.value or "", 0) >= scope:
            return []
        key = entry.key(self.attribute)
        return [f"{key}={v}" for v in values if v != self.value] or [f"{key}缺失"]

    def describe(self) -> str:
        subject = f"{self.category}{self.attribute}"
        if self.test == "equals":
            return f"{subject}={self.value}"
        if self.test == "prefix":
            return f"{subject}以{self.value}开头"
        if self.test == "any_value":
            return f"{self.category}有{self.attribute}"
        scope = f"{self.category}（{self.where[0]}={self.where[1]}）" if self.where else self.category
        return f"{scope}的{self.attribute}不是{self.value}（含缺失）"


@dataclass(frozen=True)
class Outcome:
    """What a rule finds in a ticket. `problems`: the Reason clauses of a fail, per photo the values
    that fail (`Image2: BBU安装螺丝符合性=不符合,问题=露铜`), then missing evidence (`缺少BBU设备`).
    `seen`: where each must-see item was seen (`BBU设备见Image1,Image3`); `missing`: the names of the
    items seen in no photo. `unknown`: what could not be read (`Image2` unreadable,
    `Image3: BBU安装螺丝符合性` of a dataList object)."""

    verdict: str | None  # pass | fail | None: the rule cannot decide from what it was given
    problems: tuple[str, ...]
    seen: tuple[str, ...]
    missing: tuple[str, ...]
    unknown: tuple[str, ...]

    @property
    def decidable(self) -> bool:
        return self.verdict is not None


@dataclass(frozen=True)
class MissionRule:
    mission: str
    domain: str
    must_see: tuple[Evidence, ...]
    fail_conditions: tuple[Condition, ...]

    @classmethod
    def of(cls, mission: str, entry: Mapping[str, Any], where: str = "missions") -> MissionRule:
        """The rule of a mission entry that passed the schema; a condition with no or several value
        tests, or a category, attribute or value unknown to the mission's taxonomy, is a SchemaError
        naming `where` and the mission."""
        lacking = [key for key in ("domain", "must_see", "fail_conditions") if key not in entry]
        if lacking:
            raise SchemaError(
                f"{where}: {mission}: no {', '.join(lacking)} (the mission entry format: docs/missions.md)"
            )
        domain = entry["domain"]
        taxonomy = _taxonomy(domain.upper())
        must_see = []
        for i, item in enumerate(entry["must_see"]):
            at = f"{where}: {mission}.must_see[{i}]"
            _check_attribute(taxonomy, domain, at, item["category"], item.get("attribute"))
            must_see.append(Evidence(item["category"], item.get("attribute"), item.get("name", item["category"])))
        conditions = []
        for i, item in enumerate(entry["fail_conditions"]):
            at = f"{where}: {mission}.fail_conditions[{i}]"
            tests = [t for t in TESTS if t in item]
            if len(tests) != 1:
                raise SchemaError(f"{at}: give exactly one of {', '.join(TESTS)} (found {', '.join(tests) or 'none'})")
            test, condition_where = tests[0], item.get("where")
            if condition_where is not None and test != "not_equals":
                raise SchemaError(f"{at}: `where` scopes a not_equals condition only, not {test}")
            value = None if test == "any_value" else item[test]
            _check_value(taxonomy, domain, at, item["category"], item["attribute"], value, test == "prefix")
            scope = None
            if condition_where is not None:
                scope = (condition_where["attribute"], condition_where["equals"])
                _check_value(taxonomy, domain, f"{at}.where", item["category"], *scope, False)
            conditions.append(Condition(item["category"], item["attribute"], test, value, scope))
        return cls(mission, domain, tuple(must_see), tuple(conditions))

    def evaluate(self, photos: Sequence[Photo]) -> Outcome:
        """Judge a ticket from its photos, in order (`Image1..N`); see the module docstring."""
        problems: list[str] = []
        unknown: list[str] = []
        found: dict[Evidence, list[int]] = {item: [] for item in self.must_see}
        maybe: dict[Evidence, list[int]] = {item: [] for item in self.must_see}
        for n, photo in enumerate(photos, 1):
            if photo is None:
                unknown.append(f"Image{n}")
                continue
            for entry in entries(photo):
                for item in self.must_see:
                    state = item.found(entry)
                    if state:
                        found[item].append(n)
                    elif state is None:
                        maybe[item].append(n)
                hits = []
                for condition in self.fail_conditions:
                    if condition.category == entry.category:
                        cited = condition.check(entry)
                        if cited is None:
                            attribute = next(a for a in condition.reads if not entry.knows(a))
                            unknown.append(f"Image{n}: {entry.category}{attribute}")
                        else:
                            hits += cited
                if hits:
                    problems.append(f"Image{n}: {entry.category}" + ",".join(hits))
        readable = all(photo is not None for photo in photos)
        missing = [item for item in self.must_see if not found[item]]
        unknown += [f"Image{n}: {item.category}{item.attribute}" for item in missing for n in maybe[item]]
        problems += [f"缺少{item.name}" for item in missing if readable and not maybe[item]]
        if problems:
            verdict: str | None = FAIL
        elif missing or unknown:
            verdict = None
        else:
            verdict = PASS
        seen = tuple(
            f"{item.name}见" + ",".join(f"Image{n}" for n in dict.fromkeys(images))
            for item, images in found.items()
            if images
        )
        names = tuple(item.name for item in missing)
        return Outcome(verdict, tuple(problems), seen, names, tuple(dict.fromkeys(unknown)))

    def evaluate_summaries(self, summaries: Sequence[str]) -> Outcome:
        return self.evaluate(summary_photos(summaries))

    def judges(self, category: str, key: str) -> bool:
        """Whether a value of `key` on a `category` entry can fail the ticket (a dataList 属性 as the
        attribute it stands for)."""
        attribute = LEGACY_ATTRIBUTE.get(category, key) if key == LEGACY_PROPERTY else key
        return any(c.category == category and c.attribute == attribute for c in self.fail_conditions)

    @property
    def judged_categories(self) -> tuple[str, ...]:
        """Categories whose values can fail the ticket, in rule order."""
        return tuple(dict.fromkeys(c.category for c in self.fail_conditions))

    def describe(self) -> str:
        """The rule in words (the demo manifest's `rules`, docs/missions.md)."""
        seen = "、".join(item.describe() for item in self.must_see)
        fails = "；".join(c.describe() for c in self.fail_conditions)
        return f"须看到：{seen}。以下任一即不通过：{fails}。"


# --- taxonomy checks -----------------------------------------------------------------------------


def _taxonomy(domain: str) -> dict[str, dict[str, tuple[str, ...] | None]]:
    """Category → attribute → its values (None: free text) of every object type of a domain."""
    out: dict[str, dict[str, tuple[str, ...] | None]] = {}
    for spec in TYPES.values():
        if spec.domain != domain:
            continue
        attributes: dict[str, tuple[str, ...] | None] = {
            a.key: tuple(c.value for c in a.choices) for a in spec.attributes
        }
        if spec.ocr:
            attributes |= {"文本": None, LABEL_READABLE.key: tuple(c.value for c in LABEL_READABLE.choices)}
        if spec.distance:
            attributes[spec.category] = None
        if spec.remark:
            attributes["备注"] = None
        subtypes = [c.value for c in spec.subtype.choices] if spec.subtype else []
        for category in (spec.category, *subtypes):
            out[category] = attributes
    return out


def _check_attribute(taxonomy: dict, domain: str, at: str, category: str, attribute: str | None) -> None:
    if category not in taxonomy:
        raise SchemaError(f"{at}: {category!r} is no {domain} category; known: {', '.join(taxonomy)}")
    if attribute is not None and attribute not in taxonomy[category]:
        known = ", ".join(taxonomy[category]) or "none"
        raise SchemaError(f"{at}: {category} has no attribute {attribute!r}; its attributes: {known}")


def _check_value(
    taxonomy: dict, domain: str, at: str, category: str, attribute: str, value: str | None, prefix: bool
) -> None:
    _check_attribute(taxonomy, domain, at, category, attribute)
    values = taxonomy[category][attribute]
    if value is None or values is None:
        return
    if not any(v.startswith(value) if prefix else v == value for v in values):
        kind = "starts with" if prefix else "is"
        raise SchemaError(f"{at}: no value of {category}{attribute} {kind} {value!r}; its values: {', '.join(values)}")
