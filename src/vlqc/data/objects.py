"""The parsed form of one annotated object, shared by the export parser and the builders."""

from __future__ import annotations

from dataclasses import dataclass, field

Point = tuple[float, float]

GEOMETRY_KINDS = ("bbox_2d", "poly", "line")


@dataclass
class RawObject:
    """One object of an export, before geometry normalisation and desc building.

    `type_key` is a taxonomy content key (bbu, bbu_shield, connect_point, label,
    fiber, wire, station, rru, rru_screw, ground_screw, fastener, lable, fiber_rru,
    wire_rru) for `markResult` exports; for legacy `dataList` exports it is None and
    `legacy_label` holds the raw `标签` string (`<type>/<property>[/extra…]`).
    `points` are in export pixel coordinates; a bbox_2d has its two corners.
    """

    geometry: str
    points: list[Point]
    type_key: str | None = None
    content_zh: dict[str, str | list[str]] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)
    legacy_label: str | None = None
    legacy_extra: list[str] = field(default_factory=list)
