"""Seeded, geometry-aware augmentation of one canonical record and its image (docs/augmentation.md).

Order (the origin's, docs/augmentation.md#order): geometric ops first, then copy-paste, then colour.
- Geometric ops (flips, rotation with an expanding canvas, scale, ROI crop) are composed into one
  3x3 matrix in the pixel-edge convention of `vlqc.data.geometry`; the resize to the pixel cap
  (`smart_resize`) is folded into the same matrix, so the image is resampled once
  (`Image.transform`, bicubic) and the geometry follows exactly the same map.
- Copy-paste ops (`small_object_zoom_paste`, `object_cluster_copy_paste`, `line_segment_copy_paste`,
  `vlqc.train.copy_paste`) paste patches of the training split's objects onto the warped image.
- Photometric ops (colour jitter, gamma, HSV) change pixels only; run last, they colour pasted
  patches like the rest of the image.

Geometry rules:
- bbox_2d: the box's 4 corners are transformed and clipped like a polygon; the new box
  is the AABB of what is visible (tighter than the AABB of a rotated box's corners).
- poly: vertices transformed, clipped to the canvas (Sutherland–Hodgman).
- line: every segment clipped to the canvas (Liang–Barsky); only the longest visible run
  is kept, so a line cut into pieces stays one object and the summary counts stay true.
- Visible fraction = clipped area / area (boxes, polygons) or visible length / length
  (all runs of a line). Below `crop.min_coverage`, or zero, the object is dropped; a
  cut object that stays gets `可见性=部分` (see `mark_partial`). A pasted patch hides what
  it covers by the same rules, with `occlusion.min_coverage`.
- Then `clamp_round` and the converter's degenerate-geometry rules (`geometry_entry`: a polygon
  left with < 4 distinct vertices falls back to its box, a zero-area box or a point-like line is
  dropped), objects re-sorted with `sort_key`, and the summary rebuilt from the surviving descs.

`Tally` counts what happened (ops fired, objects cut, dropped, pasted, marked partial) for the
data job's per-epoch telemetry (schema `augment_telemetry`).
"""

from __future__ import annotations

import copy
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageEnhance

from vlqc.data.convert import geometry_entry
from vlqc.data.geometry import bbox_of, clamp_round, polygon_area, smart_resize, sort_key
from vlqc.data.objects import Point
from vlqc.data.summary import IRRELEVANT, build_summary
from vlqc.data.taxonomy import KEY_ORDER, TYPES
from vlqc.errors import SampleError, SchemaError
from vlqc.schemas import check, load, with_defaults

VISIBILITY = "可见性"
PARTIAL = "部分"
# Float noise of a rotation must not count as a cut.
_WHOLE = 1.0 - 1e-6

GEOMETRIC_OPS = ("hflip", "vflip", "rotate", "scale", "crop")
PASTE_OPS = ("small_object_zoom_paste", "object_cluster_copy_paste", "line_segment_copy_paste")
COLOUR_OPS = ("color_jitter", "gamma", "hsv")
OPS = (*GEOMETRIC_OPS, *PASTE_OPS, *COLOUR_OPS)  # the order they run in
# Why a copy-paste op that fired pasted nothing.
PASTE_SKIPS = ("no_patch", "no_room", "irrelevant", "legacy_summary")
OBJECT_COUNTS = ("in", "out", "cut", "clipped", "dropped", "pasted", "marked_partial")


@dataclass
class Tally:
    """What augmentation did to the samples it saw (one materialised epoch, in the data job).

    objects: `in` before, `out` after; `cut` lost part of their area or length (to the frame or
    under a pasted patch), `clipped` are the cut ones kept, `dropped` removed (cut below the
    coverage threshold, or collapsed on the pixel grid), `pasted` added by copy-paste,
    `marked_partial` whose desc took 可见性=部分. So out = in - dropped + pasted.
    """

    samples: int = 0
    bypassed: int = 0
    ops: Counter = field(default_factory=Counter)
    paste_skipped: Counter = field(default_factory=Counter)
    objects: Counter = field(default_factory=Counter)
    coverage_sum: float = 0.0  # visible fractions of the cut objects

    def cut(self, fraction: float, kept: dict | None, desc: str) -> None:
        """Count one object that lost part of itself (`fraction` visible) and what became of it."""
        self.objects["cut"] += 1
        self.coverage_sum += fraction
        if kept is None:
            self.objects["dropped"] += 1
        else:
            self.objects["clipped"] += 1
            self.objects["marked_partial"] += kept["desc"] != desc

    def as_dict(self) -> dict[str, Any]:
        cut = self.objects["cut"]
        return {
            "samples": self.samples,
            "bypassed": self.bypassed,
            "ops": {name: self.ops[name] for name in OPS},
            "paste_skipped": {name: self.paste_skipped[name] for name in PASTE_SKIPS},
            "objects": {name: self.objects[name] for name in OBJECT_COUNTS},
            "mean_coverage": round(self.coverage_sum / cut, 6) if cut else None,
        }


class Paster(Protocol):
    """Pastes one copy-paste op's patches (`vlqc.train.copy_paste.PatchBank`)."""

    def paste(
        self,
        op: str,
        image: Image.Image,
        record: dict,
        cfg: dict,
        rng: random.Random,
        tally: Tally,
    ) -> tuple[Image.Image, dict]: ...


# --- config ------------------------------------------------------------------------------


def load_config(section: dict, max_pixels: int, where: str = "augmentation") -> dict:
    """Validate an `augmentation` config section (schema `augment`) and fill its defaults; its
    max_pixels, when not given, is `max_pixels`, the training pixel cap (template.max_pixels)."""
    check(section, "augment", where)
    cfg = with_defaults(load("augment"), {"max_pixels": max_pixels, **section})
    bad = [
        f"{name}.{key}"
        for name, op in cfg.items()
        if isinstance(op, dict)
        for key, value in op.items()
        if isinstance(value, list) and value[0] > value[1]
    ]
    bad += [
        f"{name}.{lo}/{hi}"
        for name, lo, hi in (
            ("object_cluster_copy_paste", "min_objects", "max_objects"),
            ("line_segment_copy_paste", "min_length", "max_length"),
        )
        if cfg[name][lo] > cfg[name][hi]
    ]
    if bad:
        raise SchemaError(f"{where}: range lower bound above upper bound in {', '.join(bad)}")
    return cfg


# --- pipeline ----------------------------------------------------------------------------


def augment(
    image: Image.Image,
    record: dict,
    cfg: dict,
    rng: random.Random,
    *,
    bank: Paster | None = None,
    tally: Tally | None = None,
) -> tuple[Image.Image, dict]:
    """Augment one sample; `cfg` comes from `load_config`. Draws only from `rng`, in a fixed
    order (bypass, the geometric ops, the copy-paste ops, the colour ops), so the same seed gives
    the same pixels and record. Copy-paste patches come from `bank` (none: nothing to paste), of
    the record's domain. On bypass the inputs are returned as they are; otherwise
    the record is a new dict and the input is untouched. `tally` counts what happened."""
    if image.size != (record["width"], record["height"]):
        raise SampleError(
            "image_size_mismatch",
            f"image is {image.width}x{image.height}, record says {record['width']}x{record['height']}",
            record["sample_id"],
        )
    tally = Tally() if tally is None else tally
    tally.samples += 1
    if rng.random() < cfg["bypass_prob"]:
        tally.bypassed += 1
        return image, record
    matrix, canvas = _sample_affine(record, cfg, rng, tally)
    image, out = warp(
        image.convert("RGB"),
        record,
        matrix,
        canvas,
        max_pixels=cfg["max_pixels"],
        factor=cfg["factor"],
        fill=tuple(cfg["fill"]),
        min_coverage=cfg["crop"]["min_coverage"],
        tally=tally,
    )
    for op in PASTE_OPS:
        if rng.random() >= cfg[op]["prob"]:
            continue
        if bank is None:
            tally.paste_skipped["no_patch"] += 1
        elif out["summary"] == IRRELEVANT:  # an unrelated photo (or a crop of nothing) stays 无关图片
            tally.paste_skipped["irrelevant"] += 1
        elif _legacy(out):  # its summary could not count the pasted objects
            tally.paste_skipped["legacy_summary"] += 1
        else:
            image, out = bank.paste(op, image, out, cfg, rng, tally)
    return _photometric(image, cfg, rng, tally), out


def warp(
    image: Image.Image,
    record: dict,
    matrix: np.ndarray,
    canvas: tuple[float, float],
    *,
    max_pixels: int,
    factor: int,
    fill: tuple[int, int, int],
    min_coverage: float,
    tally: Tally | None = None,
) -> tuple[Image.Image, dict]:
    """Map an RGB image and its record by `matrix` (source edge coords → a `canvas` of float
    size), then resize the canvas to `smart_resize` of it, all in one resample. Objects are
    clipped, dropped or marked partial as the module notes say, and counted in `tally`."""
    image, m = resample(image, matrix, canvas, max_pixels=max_pixels, factor=factor, fill=fill)
    width, height = image.size
    tally = Tally() if tally is None else tally
    tally.objects["in"] += len(record["objects"])
    objects = []
    for obj in record["objects"]:
        moved, fraction = _move(obj, m, width, height, min_coverage)
        if fraction < _WHOLE:
            tally.cut(fraction, moved, obj["desc"])
        elif moved is None:
            tally.objects["dropped"] += 1
        if moved is not None:
            objects.append(moved)
    tally.objects["out"] += len(objects)
    objects.sort(key=lambda o: sort_key(object_kind(o), o[object_kind(o)]))
    out = copy.deepcopy(record)
    out.update(width=width, height=height, objects=objects, summary=rebuilt_summary(record, objects))
    return image, out


def resample(
    image: Image.Image,
    matrix: np.ndarray,
    canvas: tuple[float, float],
    *,
    max_pixels: int,
    factor: int,
    fill: tuple[int, int, int],
) -> tuple[Image.Image, np.ndarray]:
    """The pixel part of `warp`: the image mapped by `matrix` onto `canvas`, resized to `smart_resize`
    of it, in one bicubic resample; and the whole map. With the identity, an image already within
    the cap comes back as it is (evaluation fits val images to a run's cap with this)."""
    cw, ch = canvas
    width, height = smart_resize(max(1, round(cw)), max(1, round(ch)), factor, max_pixels)
    m = np.diag([width / cw, height / ch, 1.0]) @ matrix
    if not (np.array_equal(m, np.eye(3)) and image.size == (width, height)):
        inverse = np.linalg.inv(m)  # Image.transform maps output pixels back to input ones
        image = image.transform(
            (width, height),
            Image.Transform.AFFINE,
            tuple(inverse[:2].ravel()),
            resample=Image.Resampling.BICUBIC,
            fillcolor=fill,
        )
    return image, m


# --- photometric ---------------------------------------------------------------------------


def _photometric(image: Image.Image, cfg: dict, rng: random.Random, tally: Tally) -> Image.Image:
    jitter = cfg["color_jitter"]
    if rng.random() < jitter["prob"]:
        tally.ops["color_jitter"] += 1
        for enhancer, key in (
            (ImageEnhance.Brightness, "brightness"),
            (ImageEnhance.Contrast, "contrast"),
            (ImageEnhance.Color, "saturation"),
        ):
            image = enhancer(image).enhance(rng.uniform(*jitter[key]))
    if rng.random() < cfg["gamma"]["prob"]:
        tally.ops["gamma"] += 1
        gamma = rng.uniform(*cfg["gamma"]["range"])
        image = image.point([round(255 * (v / 255) ** gamma) for v in range(256)] * 3)
    hsv = cfg["hsv"]
    if rng.random() < hsv["prob"]:
        tally.ops["hsv"] += 1
        shift, sat, val = (rng.uniform(*hsv[key]) for key in ("hue", "saturation", "value"))
        planes = np.asarray(image.convert("HSV"), dtype=np.float64)
        planes[..., 0] = np.round(planes[..., 0] + shift / 360 * 256) % 256  # PIL hue: 256 steps a turn
        planes[..., 1] *= sat
        planes[..., 2] *= val
        image = Image.fromarray(np.clip(np.round(planes), 0, 255).astype(np.uint8), "HSV").convert("RGB")
    return image


# --- affine sampling -----------------------------------------------------------------------


def _affine(a: float, b: float, c: float, d: float, e: float, f: float) -> np.ndarray:
    return np.array([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]])


def _sample_affine(record: dict, cfg: dict, rng: random.Random, tally: Tally) -> tuple[np.ndarray, tuple[float, float]]:
    """One matrix for flips → rotation → scale → crop, and the float size of the final canvas."""
    w, h = float(record["width"]), float(record["height"])
    m = np.eye(3)
    if rng.random() < cfg["hflip"]["prob"]:
        tally.ops["hflip"] += 1
        m = _affine(-1, 0, w, 0, 1, 0) @ m
    if rng.random() < cfg["vflip"]["prob"]:
        tally.ops["vflip"] += 1
        m = _affine(1, 0, 0, 0, -1, h) @ m
    if rng.random() < cfg["rotate"]["prob"]:
        tally.ops["rotate"] += 1
        rotation, (w, h) = _rotation(rng.uniform(*cfg["rotate"]["degrees"]), w, h)
        m = rotation @ m
    if rng.random() < cfg["scale"]["prob"]:
        tally.ops["scale"] += 1
        s = rng.uniform(*cfg["scale"]["range"])
        m = _affine(s, 0, 0, 0, s, 0) @ m
        w, h = w * s, h * s
    if rng.random() < cfg["crop"]["prob"]:
        tally.ops["crop"] += 1
        crop, (w, h) = _roi_crop(record["objects"], m, w, h, rng.uniform(*cfg["crop"]["size"]), rng)
        m = crop @ m
    return m, (w, h)


def _rotation(degrees: float, w: float, h: float) -> tuple[np.ndarray, tuple[float, float]]:
    """Counter-clockwise on screen (y down) about the centre, onto a canvas holding it all."""
    # Rounding makes 90° exact, so right angles resample without blur.
    c, s = round(math.cos(math.radians(degrees)), 12), round(math.sin(math.radians(degrees)), 12)
    new_w, new_h = abs(w * c) + abs(h * s), abs(w * s) + abs(h * c)
    to_origin = _affine(1, 0, -w / 2, 0, 1, -h / 2)
    back = _affine(1, 0, new_w / 2, 0, 1, new_h / 2)
    return back @ _affine(c, s, 0, -s, c, 0) @ to_origin, (new_w, new_h)


def _roi_crop(
    objects: list[dict], m: np.ndarray, w: float, h: float, size: float, rng: random.Random
) -> tuple[np.ndarray, tuple[float, float]]:
    """A window of `size` × the canvas sides containing the centre of a random object."""
    cw, ch = w * size, h * size
    if objects:
        obj = objects[rng.randrange(len(objects))]
        x1, y1, x2, y2 = bbox_of(_apply(m, object_points(obj)))
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        x0 = rng.uniform(max(0.0, cx - cw), min(cx, w - cw))
        y0 = rng.uniform(max(0.0, cy - ch), min(cy, h - ch))
    else:
        x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    return _affine(1, 0, -x0, 0, 1, -y0), (cw, ch)


# --- geometry ------------------------------------------------------------------------------


def object_kind(obj: dict) -> str:
    return next(key for key in obj if key != "desc")


def object_points(obj: dict) -> list[Point]:
    kind = object_kind(obj)
    flat = obj[kind]
    if kind == "bbox_2d":
        x1, y1, x2, y2 = flat
        return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    return list(zip(flat[0::2], flat[1::2]))


def _apply(m: np.ndarray, points: Sequence[Point]) -> list[Point]:
    return [(m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]) for x, y in points]


def _move(obj: dict, m: np.ndarray, width: int, height: int, min_coverage: float) -> tuple[dict | None, float]:
    """The object in the new frame (None when it is (mostly) out of view or degenerate) and its
    visible fraction."""
    kind = object_kind(obj)
    points = _apply(m, object_points(obj))
    if kind == "line":
        runs = clip_line(points, width, height)
        kept = max(runs, key=polyline_length, default=[])
        fraction = _ratio(sum(map(polyline_length, runs)), polyline_length(points))
    else:
        kept = clip_polygon(points, width, height)
        fraction = _ratio(polygon_area(kept), polygon_area(points))
    return keep_visible(obj, kind, kept, fraction, width, height, min_coverage), fraction


def keep_visible(
    obj: dict, kind: str, kept: Sequence[Point], fraction: float, width: int, height: int, min_coverage: float
) -> dict | None:
    """The visible part `kept` (float points) of `obj` as a record object, or None when too
    little is visible (below `min_coverage`, or nothing) or it collapses on the pixel grid.
    A cut object's desc is marked 可见性=部分."""
    if fraction <= 0 or fraction < min_coverage:
        return None
    try:
        entry = geometry_entry(kind, clamp_round(kept, width, height))
    except SampleError:
        return None  # collapsed to nothing on the integer grid
    entry["desc"] = obj["desc"] if fraction >= _WHOLE else mark_partial(obj["desc"])
    return entry


def _ratio(part: float, whole: float) -> float:
    # A zero-size object has nothing to see: it counts as out of view.
    return part / whole if whole > 0 else 0.0


def polyline_length(points: Sequence[Point]) -> float:
    return sum(math.dist(a, b) for a, b in zip(points, points[1:]))


def clip_polygon(points: Sequence[Point], width: float, height: float) -> list[Point]:
    """Sutherland–Hodgman clip of a ring to [0, width] x [0, height]; [] when nothing is inside."""
    ring = list(points)
    # (axis, limit, sign): keep points with sign * (p[axis] - limit) >= 0.
    for axis, limit, sign in ((0, 0.0, 1), (0, width, -1), (1, 0.0, 1), (1, height, -1)):
        inside = [sign * (p[axis] - limit) >= 0 for p in ring]
        clipped: list[Point] = []
        for i, p in enumerate(ring):
            q, q_inside = ring[i - 1], inside[i - 1]
            if inside[i] != q_inside:
                clipped.append(_cross(q, p, axis, limit))
            if inside[i]:
                clipped.append(p)
        ring = clipped
        if not ring:
            break
    return ring


def _cross(a: Point, b: Point, axis: int, limit: float) -> Point:
    """Where segment a-b meets the line p[axis] == limit (set exactly, to avoid float noise)."""
    t = (limit - a[axis]) / (b[axis] - a[axis])
    other = a[1 - axis] + t * (b[1 - axis] - a[1 - axis])
    return (limit, other) if axis == 0 else (other, limit)


def clip_line(points: Sequence[Point], width: float, height: float) -> list[list[Point]]:
    """The visible runs of a polyline in [0, width] x [0, height], in order."""
    runs: list[list[Point]] = []
    open_run = False  # the previous segment ended inside, so a run may continue
    for a, b in zip(points, points[1:]):
        span = clip_segment(a, b, width, height)
        if span is None:
            open_run = False
            continue
        t0, t1 = span
        start, end = _lerp(a, b, t0), _lerp(a, b, t1)
        if open_run and t0 == 0:
            runs[-1].append(end)
        else:
            runs.append([start, end])
        open_run = t1 == 1
    return runs


def clip_segment(a: Point, b: Point, width: float, height: float) -> tuple[float, float] | None:
    """Liang–Barsky: the parameter span [t0, t1] of a→b inside the canvas, or None."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    t0, t1 = 0.0, 1.0
    for p, q in ((-dx, a[0]), (dx, width - a[0]), (-dy, a[1]), (dy, height - a[1])):
        if p == 0:
            if q < 0:
                return None
        elif p < 0:
            t0 = max(t0, q / p)
        else:
            t1 = min(t1, q / p)
    return (t0, t1) if t0 <= t1 else None


def _lerp(a: Point, b: Point, t: float) -> Point:
    return (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))


# --- descs and summary ---------------------------------------------------------------------


def _visibility_key_orders() -> dict[str, tuple[str, ...]]:
    """Desc key order of every 类别 whose type has a 可见性 attribute (subtypes included)."""
    orders: dict[str, tuple[str, ...]] = {}
    for spec in TYPES.values():
        if any(attr.key == VISIBILITY for attr in spec.attributes):
            names = [spec.category, *(c.value for c in spec.subtype.choices)] if spec.subtype else [spec.category]
            orders.update((name, KEY_ORDER[spec.key]) for name in names)
    return orders


_VISIBILITY_ORDER = _visibility_key_orders()


def mark_partial(desc: str) -> str:
    """`desc` with 可见性=部分 when its 类别 has a 可见性 attribute, else `desc` unchanged.

    An existing 可见性 value is replaced; otherwise the pair goes before the first key that
    follows 可见性 in the type's key order (or before 组, or at the end). The 类别 decides,
    so legacy dataList descs of those categories are marked too.
    """
    pairs = [token.split("=", 1) for token in desc.split(",")]
    order = _VISIBILITY_ORDER.get(pairs[0][1])
    if order is None:
        return desc
    later = (*order[order.index(VISIBILITY) + 1 :], "组")
    if any(key == VISIBILITY for key, _ in pairs):
        pairs = [[key, PARTIAL if key == VISIBILITY else value] for key, value in pairs]
    else:
        at = next((i for i, (key, _) in enumerate(pairs) if key in later), len(pairs))
        pairs.insert(at, [VISIBILITY, PARTIAL])
    return ",".join(f"{key}={value}" for key, value in pairs)


def _legacy(record: dict) -> bool:
    """A legacy ×N summary (docs/summary-format.md): not rebuilt from descs."""
    return not record["summary"].startswith("{") and record["summary"] != IRRELEVANT


def rebuilt_summary(record: dict, objects: list[dict]) -> str:
    """The summary of the surviving objects.

    A legacy ×N summary cannot be rebuilt (its slash descs are not in the record): it is
    kept while the descs are unchanged, and changing them is an error.
    """
    descs = [obj["desc"] for obj in objects]
    if not _legacy(record):
        return build_summary(descs, record["domain"])
    if sorted(descs) == sorted(obj["desc"] for obj in record["objects"]):
        return record["summary"]
    raise SampleError(
        "legacy_summary",
        f"{record['sample_id']}: augmentation dropped or re-marked objects "
        "of a record with a legacy summary, which cannot be rebuilt",
    )
