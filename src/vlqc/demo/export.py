"""Write a scene's objects as an annotation-platform export (docs/export-format.md), either variant.

Attributes arrive in the compressed desc vocabulary (`符合性=不符合`, `问题=露铜`); the export
carries the raw platform answers (`不符合要求/露铜`) under the platform's question keys, so
the converter's raw → desc mapping is exercised for real. Coordinates must already be in
the stored-pixel frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlqc.demo.scene import Attrs, Point, SceneObject, issues_of

# Question keys (contentZh) of the platform, per object type.
Q_BBU_BRAND = "这个BBU设备是什么品牌"
Q_BBU_VISIBLE = "这个BBU设备是否显示完整"
Q_BBU_SHIELD = "这个BBU设备是否需要安装挡风板，结合图片中机柜空间状态判断"
Q_SHIELD_BRAND = "这个挡风板是什么牌子"
Q_SHIELD_VISIBLE = "这个挡风板是否显示完整"
Q_SHIELD_DIRECTION = "这个挡风板安装方向是否正确"
Q_SHIELD_BLOCKED = "这个挡风板是否被杂物遮挡"
Q_POINT_KIND = "这个螺丝/插头是什么种类"
Q_POINT_VISIBLE = "螺丝/插头是否显示完整"
Q_POINT_OK = "这个螺丝/插头连接是否符合要求"
Q_FIBER_BLOCKED = "这条光纤是否被遮挡"
Q_FIBER_PROTECTION = "这条光纤是否采用保护措施"
Q_FIBER_BEND = "这条光纤弯曲半径是否合理"
Q_WIRE_BLOCKED = "这条电线是否被遮挡"
Q_WIRE_TIDY = "这条电线是否捆扎整齐"
Q_LABEL_READABLE = "能否阅读标签上的文字内容"
Q_LABEL_TEXT = "请输入标签上的文字内容"

VISIBLE = {"完整": "显示完整", "部分": "只显示部分"}
DIRECTION = {"方向正确": "安装方向正确", "方向错误": "安装方向错误"}
PROTECTION_DETAIL = {"蛇形管": "蛇形管", "铠装": "铠装", "蛇形管+铠装": "同时有蛇形管和铠装"}
BEND = {"半径合理": "弯曲半径合理", "半径不合理<4cm或成环": "弯曲半径不合理（弯曲半径<4cm或者成环）"}
TIDY = {"整齐": "捆扎整齐", "散乱": "分布散乱"}
LEGACY_TYPE = {
    "bbu": "BBU设备",
    "bbu_shield": "挡风板",
    "connect_point": "螺丝、光纤插头",
    "fiber": "光纤",
    "wire": "电线",
    "label": "标签",
}
LABEL_COLOR = {
    "bbu": [255, 0, 0],
    "bbu_shield": [255, 200, 0],
    "connect_point": [0, 160, 255],
    "fiber": [0, 200, 80],
    "wire": [160, 0, 255],
    "label": [255, 120, 200],
}


def shield_answer(attrs: Attrs) -> str:
    if attrs["挡风板需求"] == "免装":
        return "无需安装"
    equipped = "按要求配备了" if attrs["挡风板符合性"] == "按要求配备" else "未按要求配备"
    return f"机柜空间充足，需要安装/这个BBU设备{equipped}挡风板"


def conform_answer(attrs: Attrs) -> str:
    issues = issues_of(attrs)
    return "不符合要求/" + "，".join(issues) if issues else "符合要求"


def protection_answer(attrs: Attrs) -> str:
    detail = attrs.get("保护细节")
    return f"有保护措施，保护措施为/{PROTECTION_DETAIL[detail]}" if detail else "无保护措施"


def content_zh(kind: str, attrs: Attrs) -> dict[str, str]:
    """The raw answers of one object, keyed by the platform's questions."""
    if kind == "bbu":
        return {
            "标签": "BBU设备",
            Q_BBU_BRAND: attrs["品牌"],
            Q_BBU_VISIBLE: VISIBLE[attrs["可见性"]],
            Q_BBU_SHIELD: shield_answer(attrs),
        }
    if kind == "bbu_shield":
        return {
            "标签": "挡风板",
            Q_SHIELD_BRAND: attrs["品牌"],
            Q_SHIELD_VISIBLE: VISIBLE[attrs["可见性"]],
            Q_SHIELD_DIRECTION: DIRECTION[attrs["安装方向"]],
            Q_SHIELD_BLOCKED: "无遮挡",
        }
    if kind == "connect_point":
        return {
            Q_POINT_KIND: attrs["类别"],
            Q_POINT_VISIBLE: VISIBLE[attrs["可见性"]],
            Q_POINT_OK: conform_answer(attrs),
        }
    if kind == "fiber":
        return {
            Q_FIBER_BLOCKED: "无遮挡",
            Q_FIBER_PROTECTION: protection_answer(attrs),
            Q_FIBER_BEND: BEND[attrs["弯曲半径"]],
        }
    if kind == "wire":
        return {Q_WIRE_BLOCKED: "无遮挡", Q_WIRE_TIDY: TIDY[attrs["捆扎"]]}
    if "文本" in attrs:
        return {Q_LABEL_READABLE: "能", Q_LABEL_TEXT: attrs["文本"]}
    return {Q_LABEL_READABLE: "不能"}


def legacy_content_zh(kind: str, attrs: Attrs) -> dict[str, str]:
    """`dataList` form: `标签` = `<type>/<property>[/detail]`; other answers ride along as extra keys."""
    full = content_zh(kind, attrs)
    prop, rest = {
        "bbu": (attrs.get("品牌", ""), [Q_BBU_VISIBLE, Q_BBU_SHIELD]),
        "bbu_shield": (attrs.get("安装方向", ""), [Q_SHIELD_BRAND, Q_SHIELD_VISIBLE]),
        "connect_point": (attrs["类别"], [Q_POINT_VISIBLE, Q_POINT_OK]),
        "fiber": (attrs.get("保护措施", ""), [Q_FIBER_BEND]),
        "wire": (attrs.get("捆扎", ""), []),
        "label": ("", [Q_LABEL_READABLE, Q_LABEL_TEXT]),
    }[kind]
    tag = LEGACY_TYPE[kind] + (f"/{prop}" if prop else "")
    if kind == "fiber" and "保护细节" in attrs:
        tag += "/" + PROTECTION_DETAIL[attrs["保护细节"]]
    return {"标签": tag, **{q: full[q] for q in rest if q in full}}


# --- geometry ---------------------------------------------------------------------------------


def _ints(points: Sequence[Point], width: int, height: int) -> list[list[int]]:
    """Round and clamp into the image; drop consecutive duplicates (the converter rejects them in lines)."""
    out: list[list[int]] = []
    for x, y in points:
        p = [int(min(max(round(x), 0), width - 1)), int(min(max(round(y), 0), height - 1))]
        if not out or p != out[-1]:
            out.append(p)
    return out


def _shoelace(ring: Sequence[Sequence[int]]) -> float:
    return 0.5 * sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, [*ring[1:], ring[0]]))


def _clockwise(ring: list[list[int]]) -> list[list[int]]:
    """Clockwise on screen (y down) = positive shoelace sum; a mirroring EXIF transform flips it."""
    return ring if _shoelace(ring) >= 0 else ring[:1] + ring[:0:-1]


def _aabb(points: Sequence[Point], width: int, height: int) -> tuple[int, int, int, int]:
    pts = _ints(points, width, height)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return min(xs), min(ys), max(xs), max(ys)


def _geometry(obj: SceneObject, width: int, height: int, as_quad: bool) -> tuple[dict[str, Any], float | None]:
    if obj.shape == "line":
        pts = _ints(obj.points, width, height)
        return {"type": "LineString", "coordinates": pts, "lineType": "L" * len(pts), "lineMode": 1}, None
    if obj.shape == "quad" or as_quad:
        corners = obj.points if obj.shape == "quad" else _rect_corners(obj.points)
        ring = _clockwise(_ints(corners, width, height))
        return {"type": "Quad", "coordinates": [ring + [ring[0]]]}, abs(_shoelace(ring))
    x0, y0, x1, y1 = _aabb(obj.points, width, height)
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "ExtentPolygon", "coordinates": ring}, float((x1 - x0) * (y1 - y0))


def _rect_corners(points: Sequence[Point]) -> list[Point]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return [(min(xs), min(ys)), (max(xs), min(ys)), (max(xs), max(ys)), (min(xs), max(ys))]


# --- documents --------------------------------------------------------------------------------


def mark_result(objects: Sequence[SceneObject], width: int, height: int, rng: np.random.Generator) -> dict[str, Any]:
    """The `markResult` FeatureCollection variant, with the platform's ignored extras."""
    features = []
    for object_id, obj in enumerate(objects, start=1):
        geometry, area = _geometry(obj, width, height, as_quad=obj.kind == "label" and rng.random() < 0.5)
        props: dict[str, Any] = {
            "objectId": object_id,
            "groups": [],
            "content": {"label": obj.kind},
            "contentZh": content_zh(obj.kind, obj.attrs),
            "labelColor": LABEL_COLOR[obj.kind],
            "generateMode": int(rng.integers(1, 3)),
            "quality": {"qualityStatus": "passed", "errorType": [], "changes": []},
        }
        if area is not None:
            props["area"] = area
        features.append({"type": "Feature", "geometry": geometry, "properties": props})
    return {
        "info": {"width": width, "height": height, "depth": 3},
        "markResult": {"type": "FeatureCollection", "features": features},
        "version": "2.3.1",
        "workload": {"objects": len(features)},
    }


def data_list(objects: Sequence[SceneObject], width: int, height: int, rng: np.random.Generator) -> dict[str, Any]:
    """The legacy `dataList` variant: rectangles only (two corners in any order)."""
    items = []
    for obj in objects:
        x0, y0, x1, y1 = _aabb(obj.footprint, width, height)
        corners = [[x0, y0], [x1, y1]] if rng.random() < 0.5 else [[x1, y1], [x0, y0]]
        items.append({"coordinates": corners, "properties": {"contentZh": legacy_content_zh(obj.kind, obj.attrs)}})
    return {"info": {"width": width, "height": height, "depth": 3}, "dataList": items}
