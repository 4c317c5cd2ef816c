"""Read one annotation export (docs/export-format.md) into `RawObject`s.

Both variants are accepted: `markResult.features` (native geometry) and the legacy
`dataList` (rectangles only; it wins when both are present). Whole-file problems
raise `SampleError`; a single unusable object is returned in `dropped` so the
rest of the photo still converts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from vlqc.data.geometry import bbox_of, polygon_area
from vlqc.data.objects import Point, RawObject
from vlqc.data.taxonomy import keeps_groups, resolve_type
from vlqc.errors import SampleError, SchemaError
from vlqc.schemas import validate

POLYGON_TYPES = {"Quad", "Square", "Polygon"}
GROUP_NAME_RE = re.compile(r"^(?:组|group_)(\d+)$")


@dataclass
class ParsedExport:
    variant: str
    width: int
    height: int
    objects: list[tuple[int, RawObject]] = field(default_factory=list)
    dropped: list[tuple[int, SampleError]] = field(default_factory=list)

    @property
    def total_objects(self) -> int:
        return len(self.objects) + len(self.dropped)


def load_export(path: Path) -> dict:
    """Decode, parse and schema-check one export file."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SampleError("not_utf8", f"not UTF-8 text (byte {exc.start})", str(path)) from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SampleError("malformed_json", f"line {exc.lineno} col {exc.colno}: {exc.msg}", str(path)) from exc
    if not isinstance(doc, dict):
        raise SampleError("malformed_json", "top level is not an object", str(path))
    schema = "export_datalist" if "dataList" in doc else "export_markresult"
    try:
        validate(doc, schema, str(path))
    except SchemaError as exc:
        raise SampleError("schema_violation", str(exc), str(path)) from exc
    return doc


def parse_export(doc: dict) -> ParsedExport:
    info = doc["info"]
    if "dataList" in doc:
        parsed = ParsedExport("dataList", info["width"], info["height"])
        items = enumerate(doc["dataList"])
        parse = _parse_datalist_item
    else:
        parsed = ParsedExport("markResult", info["width"], info["height"])
        items = enumerate(doc["markResult"]["features"])
        parse = _parse_feature
    for index, item in items:
        try:
            parsed.objects.append((index, parse(item)))
        except SampleError as exc:
            parsed.dropped.append((index, exc))
    return parsed


def _parse_feature(feature: dict) -> RawObject:
    props = feature["properties"]
    content_zh = props.get("contentZh") or {}
    label = (props.get("content") or {}).get("label")
    type_key = resolve_type(label, content_zh)
    if type_key is None:
        shown = label or content_zh.get("标签") or "<none>"
        raise SampleError("unknown_category", f"unknown object type {shown!r}")
    geometry, points = _feature_geometry(feature["geometry"], props)
    groups = _group_tokens(props.get("groups") or []) if keeps_groups(type_key) else []
    return RawObject(geometry=geometry, points=points, type_key=type_key, content_zh=content_zh, groups=groups)


def _feature_geometry(geometry: dict, props: dict) -> tuple[str, list[Point]]:
    kind = geometry["type"]
    coords = geometry["coordinates"]
    # Polygons come as ring lists ([[[x, y], …]]); ring 0 is the outline.
    if coords and isinstance(coords[0][0], list):
        coords = coords[0]
    points = [(float(x), float(y)) for x, y in coords]
    if not points:
        raise SampleError("empty_geometry", f"{kind} has no coordinates")
    if kind == "LineString":
        if len(points) < 2:
            raise SampleError("degenerate_line", "line with fewer than 2 points")
        return "line", points
    if kind in POLYGON_TYPES:
        area = props.get("area") or props.get("selfArea") or 0
        if area >= 1 and len(set(points)) >= 4 and polygon_area(points) >= 1:
            return "poly", points
    x1, y1, x2, y2 = bbox_of(points)
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        raise SampleError("zero_area", f"{kind} encloses no area")
    return "bbox_2d", [(x1, y1), (x2, y2)]


def _group_tokens(groups: list[dict]) -> list[str]:
    tokens = []
    for group in groups:
        if group.get("id") is not None:
            tokens.append(str(group["id"]))
            continue
        match = GROUP_NAME_RE.match(str(group.get("name", "")).strip())
        if match is None:
            raise SampleError("bad_group", f"group without id or 组N name: {group}")
        tokens.append(match.group(1))
    return tokens


def _parse_datalist_item(item: dict) -> RawObject:
    content_zh = item["properties"]["contentZh"]
    label_key = next((key for key in content_zh if "标签" in key), None)
    if label_key is None:
        raise SampleError("unknown_category", "dataList item without a 标签 entry")
    label = _text(content_zh[label_key])
    extra = [_text(value) for key, value in content_zh.items() if key != label_key and _text(value)]
    (ax, ay), (bx, by) = item["coordinates"]
    # Corners may come in any order; negative values are clamped like the origin does.
    x1, x2 = sorted((max(ax, 0.0), max(bx, 0.0)))
    y1, y2 = sorted((max(ay, 0.0), max(by, 0.0)))
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        raise SampleError("zero_area", "dataList rectangle encloses no area")
    return RawObject(geometry="bbox_2d", points=[(x1, y1), (x2, y2)], legacy_label=label, legacy_extra=extra)


def _text(value: str | list[str]) -> str:
    return ", ".join(value) if isinstance(value, list) else value
