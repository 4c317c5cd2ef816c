"""Per-image summaries built from the object descs of one image.

Current (docs/summary-format.md#json-summary): one JSON line,
`{"统计": [{"类别": …, <key>: {value: count}, …}, …], "备注": [...]}` for BBU or
`{"统计": [...], "分组统计": {"<id>": n}}` for RRU.
Legacy (docs/summary-format.md#legacy-n-summary, cc1d856): identical slash descs counted, `desc×N` joined with `，`.

An image without objects gets the literal `无关图片` from both builders: callers
write it as the summary and the model learns to answer it on a single line.
"""

from __future__ import annotations

import json
from collections import Counter

from vlqc.data.desc import FREE_TEXT_KEYS, group_sort_key, parse_desc
from vlqc.data.taxonomy import BBU, RRU, categories, is_negative
from vlqc.errors import SampleError

IRRELEVANT = "无关图片"
STATION = "站点距离"


def build_summary(descs: list[str], domain: str) -> str:
    """The JSON summary of one image's key=value descs; `无关图片` when there are none.

    Raises `SampleError` (the sample is rejected) with code `empty_value`,
    `missing_category`, `unknown_category` or `summary_conflict`.
    """
    _check_domain(domain)
    if not descs:
        return IRRELEVANT
    allowed = categories(domain)
    stats: dict[str, dict[str, dict[str, int]]] = {}
    remarks: list[str] = []
    groups: Counter[str] = Counter()
    for desc in descs:
        fields = parse_desc(desc)
        category = _category(desc, fields, allowed, domain)
        _check_conflicts(desc, fields)
        entry = stats.setdefault(category, {})
        for key, values in fields.items():
            # 备注 is a BBU section of its own; groups exist only in RRU summaries.
            if key == "备注":
                if domain == BBU:
                    remarks.extend(v for v in values if v not in remarks)
                continue
            if key == "组":
                if domain != RRU:
                    continue
                groups.update(values)
            counts = entry.setdefault(key, {})
            for value in values:
                counts[value] = counts.get(value, 0) + 1

    order = sorted(stats, key=lambda c: (domain == RRU and c != STATION, c))
    summary: dict[str, object] = {
        "统计": [{"类别": c, **{key: stats[c][key] for key in sorted(stats[c])}} for c in order]
    }
    if remarks:
        summary["备注"] = remarks
    if groups:
        summary["分组统计"] = {g: groups[g] for g in sorted(groups, key=group_sort_key)}
    return json.dumps(summary, ensure_ascii=False, separators=(", ", ": "))


def _check_domain(domain: str) -> None:
    if domain not in (BBU, RRU):
        raise ValueError(f"domain must be {BBU!r} or {RRU!r}, not {domain!r}")


def _category(desc: str, fields: dict[str, list[str]], allowed: frozenset[str], domain: str) -> str:
    values = fields.pop("类别", None)
    if values is None:
        raise SampleError("missing_category", f"desc {desc!r} has no 类别")
    if len(values) != 1 or values[0] not in allowed:
        raise SampleError("unknown_category", f"desc {desc!r}: 类别 {'|'.join(values)!r} is not a {domain} category")
    return values[0]


def _check_conflicts(desc: str, fields: dict[str, list[str]]) -> None:
    for key, values in fields.items():
        if key in FREE_TEXT_KEYS:
            continue
        negatives = [v for v in values if is_negative(v)]
        if negatives and len(negatives) < len(values):
            shown = "|".join(values)
            raise SampleError("summary_conflict", f"desc {desc!r}: {key} is both negative and positive ({shown})")


def build_legacy_summary(legacy_descs: list[str], domain: str) -> str:
    """The cc1d856 summary: identical slash descs as `desc×N`, shortest first, ties in
    first-appearance order, joined with `，`; RRU station segments drop `×1`."""
    _check_domain(domain)
    if not legacy_descs:
        return IRRELEVANT
    counts: dict[str, int] = {}
    for desc in legacy_descs:
        if not desc.strip():
            raise SampleError("empty_value", "an object has an empty legacy desc")
        counts[desc] = counts.get(desc, 0) + 1
    first_seen = {desc: index for index, desc in enumerate(counts)}
    ordered = sorted(counts, key=lambda d: (len(d), first_seen[d]))
    return "，".join(_segment(d, counts[d], domain) for d in ordered)


def _segment(desc: str, count: int, domain: str) -> str:
    body = desc.split(":", 1)[1] if desc.startswith("组") and ":" in desc else desc
    if domain == RRU and count == 1 and (body == STATION or body.startswith(STATION + "/")):
        return desc
    return f"{desc}×{count}"
