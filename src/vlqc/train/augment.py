"""Seeded, geometry-aware augmentation of one canonical record and its image.

Photometric ops (colour jitter, gamma, HSV) change pixels only. Geometric ops (flips,
rotation with an expanding canvas, scale, ROI crop) are composed into one 3x3 matrix
in the pixel-edge convention of `vlqc.data.geometry`; the resize to the pixel cap
(`smart_resize`) is folded into the same matrix, so the image is resampled once
(`Image.transform`, bicubic) and the geometry follows exactly the same map.

Geometry rules:
- bbox_2d: the box's 4 corners are transformed and clipped like a polygon; the new box
  is the AABB of what is visible (tighter than the AABB of a rotated box's corners).
- poly: vertices transformed, clipped to the canvas (Sutherland–Hodgman).
- line: every segment clipped to the canvas (Liang–Barsky); only the longest visible run
  is kept, so a line cut into pieces stays one object and the summary counts stay true.
- Visible fraction = clipped area / area (boxes, polygons) or visible length / length
  (all runs of a line). Below `crop.min_coverage`, or zero, the object is dropped; a
  cut object that stays gets `可见性=部分` (see `mark_partial`).
- Then `clamp_round` and the converter's degenerate-geometry rules (a polygon left with
  < 4 distinct vertices becomes a box, a zero-area box or a point-like line is dropped),
  objects re-sorted with `sort_key`, and the summary rebuilt from the surviving descs.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence

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
    if bad:
        raise SchemaError(f"{where}: range lower bound above upper bound in {', '.join(bad)}")
    return cfg


# --- pipeline ----------------------------------------------------------------------------


def augment(image: Image.Image, record: dict, cfg: dict, rng: random.Random) -> tuple[Image.Image, dict]:
    """Augment one sample; `cfg` comes from `load_config`. Draws only from `rng`, in a fixed
    order, so the same seed gives the same pixels and record. On bypass the inputs are
    returned as they are; otherwise the record is a new dict and the input is untouched."""
    if image.size != (record["width"], record["height"]):
        raise SampleError(
            "image_size_mismatch",
            f"image is {image.width}x{image.height}, record says {record['width']}x{record['height']}",
            record["sample_id"],
        )
    if rng.random() < cfg["bypass_prob"]:
        return image, record
    image = _photometric(image.convert("RGB"), cfg, rng)
    matrix, canvas = _sample_affine(record, cfg, rng)
    return warp(
        image,
        record,
        matrix,
        canvas,
        max_pixels=cfg["max_pixels"],
        factor=cfg["factor"],
        fill=tuple(cfg["fill"]),
        min_coverage=cfg["crop"]["min_coverage"],
    )


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
) -> tuple[Image.Image, dict]:
    """Map an RGB image and its record by `matrix` (source edge coords → a `canvas` of float
    size), then resize the canvas to `smart_resize` of it, all in one resample. Objects are
    clipped, dropped or marked partial as the module notes say."""
    image, m = resample(image, matrix, canvas, max_pixels=max_pixels, factor=factor, fill=fill)
    width, height = image.size
    objects = [moved for obj in record["objects"] if (moved := _move(obj, m, width, height, min_coverage)) is not None]
    objects.sort(key=lambda o: sort_key(_kind(o), o[_kind(o)]))
    out = copy.deepcopy(record)
    out.update(width=width, height=height, objects=objects, summary=_summary(record, objects))
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


def _photometric(image: Image.Image, cfg: dict, rng: random.Random) -> Image.Image:
    jitter = cfg["color_jitter"]
    if rng.random() < jitter["prob"]:
        for enhancer, key in (
            (ImageEnhance.Brightness, "brightness"),
            (ImageEnhance.Contrast, "contrast"),
            (ImageEnhance.Color, "saturation"),
        ):
            image = enhancer(image).enhance(rng.uniform(*jitter[key]))
    if rng.random() < cfg["gamma"]["prob"]:
        gamma = rng.uniform(*cfg["gamma"]["range"])
        image = image.point([round(255 * (v / 255) ** gamma) for v in range(256)] * 3)
    hsv = cfg["hsv"]
    if rng.random() < hsv["prob"]:
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


def _sample_affine(record: dict, cfg: dict, rng: random.Random) -> tuple[np.ndarray, tuple[float, float]]:
    """One matrix for flips → rotation → scale → crop, and the float size of the final canvas."""
    w, h = float(record["width"]), float(record["height"])
    m = np.eye(3)
    if rng.random() < cfg["hflip"]["prob"]:
        m = _affine(-1, 0, w, 0, 1, 0) @ m
    if rng.random() < cfg["vflip"]["prob"]:
        m = _affine(1, 0, 0, 0, -1, h) @ m
    if rng.random() < cfg["rotate"]["prob"]:
        rotation, (w, h) = _rotation(rng.uniform(*cfg["rotate"]["degrees"]), w, h)
        m = rotation @ m
    if rng.random() < cfg["scale"]["prob"]:
        s = rng.uniform(*cfg["scale"]["range"])
        m = _affine(s, 0, 0, 0, s, 0) @ m
        w, h = w * s, h * s
    if rng.random() < cfg["crop"]["prob"]:
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
        x1, y1, x2, y2 = bbox_of(_apply(m, _points(obj)))
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        x0 = rng.uniform(max(0.0, cx - cw), min(cx, w - cw))
        y0 = rng.uniform(max(0.0, cy - ch), min(cy, h - ch))
    else:
        x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    return _affine(1, 0, -x0, 0, 1, -y0), (cw, ch)


# --- geometry ------------------------------------------------------------------------------


def _kind(obj: dict) -> str:
    return next(key for key in obj if key != "desc")


def _points(obj: dict) -> list[Point]:
    kind = _kind(obj)
    flat = obj[kind]
    if kind == "bbox_2d":
        x1, y1, x2, y2 = flat
        return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    return list(zip(flat[0::2], flat[1::2]))


def _apply(m: np.ndarray, points: Sequence[Point]) -> list[Point]:
    return [(m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]) for x, y in points]


def _move(obj: dict, m: np.ndarray, width: int, height: int, min_coverage: float) -> dict | None:
    """The object in the new frame, or None when it is (mostly) out of view or degenerate."""
    kind = _kind(obj)
    points = _apply(m, _points(obj))
    if kind == "line":
        runs = clip_line(points, width, height)
        kept = max(runs, key=_length, default=[])
        fraction = _ratio(sum(map(_length, runs)), _length(points))
    else:
        kept = clip_polygon(points, width, height)
        fraction = _ratio(polygon_area(kept), polygon_area(points))
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


def _length(points: Sequence[Point]) -> float:
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
        span = _clip_segment(a, b, width, height)
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


def _clip_segment(a: Point, b: Point, width: float, height: float) -> tuple[float, float] | None:
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


def _summary(record: dict, objects: list[dict]) -> str:
    """The summary of the surviving objects.

    A legacy ×N summary cannot be rebuilt (its slash descs are not in the record): it is
    kept while the descs are unchanged, and changing them is an error.
    """
    descs = [obj["desc"] for obj in objects]
    legacy = not record["summary"].startswith("{") and record["summary"] != IRRELEVANT
    if not legacy:
        return build_summary(descs, record["domain"])
    if sorted(descs) == sorted(obj["desc"] for obj in record["objects"]):
        return record["summary"]
    raise SampleError(
        "legacy_summary",
        f"{record['sample_id']}: augmentation dropped or re-marked objects "
        "of a record with a legacy summary, which cannot be rebuilt",
    )
