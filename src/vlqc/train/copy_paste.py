"""Copy-paste augmentation: a patch bank built from the training split, and the three ops that
paste from it (docs/augmentation.md#copy-paste).

The bank is built once per data job (`build_bank`) from the training records as prepared for
training (images within the pixel cap, geometry in their pixels), in file and record order, so it
is a pure function of its inputs: no random draw is made while building it. A patch is a
rectangle of one source image and the objects it holds whole:

- `small_object_zoom_paste`: one box or polygon object whose box side is at most `max_size`,
  grown by `context`;
- `object_cluster_copy_paste`: a seed object and every object whose box meets the seed's box grown
  by `radius` (`min_objects`..`max_objects` of them), the box of them all grown by `context`, at
  most `max_size` a side;
- `line_segment_copy_paste`: one whole line of `min_length`..`max_length` pixels, its box grown by
  `context` (the strip of image around the line).

Only complete objects go in: a key=value desc that is not 可见性=部分, of a record with a JSON
summary, and geometry clear of the image border (an object touching it may be cut by the
frame). A rectangle must hold its objects alone: any other object that meets it must contain it
whole (the device a screw sits on), or the patch is not banked, so a paste never shows a piece of
an object it does not annotate.

Pasting (`PatchBank.paste`, called by `vlqc.train.augment.augment` after the geometric ops): a patch
of the record's domain is drawn, scaled, and placed at a random position wholly inside the image,
up to `max_attempts` times, until no object already there would lose more than `max_hidden` of
itself. The objects under the patch are clipped, marked 可见性=部分 or dropped by their visible
fraction (`occlusion.min_coverage`); the patch's objects are added with the patch's map
(scale, then translation) applied, and the summary is rebuilt from the descs.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from vlqc.data.convert import geometry_entry
from vlqc.data.geometry import bbox_of, clamp_round, polygon_area, sort_key
from vlqc.data.objects import Point
from vlqc.errors import SampleError
from vlqc.train.augment import (
    _WHOLE,
    PARTIAL,
    PASTE_OPS,
    VISIBILITY,
    Tally,
    clip_polygon,
    clip_segment,
    keep_visible,
    object_kind,
    object_points,
    polyline_length,
    rebuilt_summary,
)

Rect = tuple[int, int, int, int]  # x1, y1, x2, y2 on the pixel-edge grid


@dataclass(frozen=True)
class PatchObject:
    kind: str  # bbox_2d | poly | line
    points: tuple[Point, ...]  # relative to the patch's top-left corner, in source pixels
    desc: str


@dataclass(frozen=True)
class Patch:
    op: str
    domain: str
    image: Path  # the prepared source image
    box: Rect  # the patch in the source image
    objects: tuple[PatchObject, ...]
    source: str  # sample_id of the source record

    @property
    def size(self) -> tuple[int, int]:
        return self.box[2] - self.box[0], self.box[3] - self.box[1]


class PatchBank:
    """Patches by op and domain, in the order they were found."""

    def __init__(self, patches: Iterable[Patch]) -> None:
        self._pools: dict[tuple[str, str], list[Patch]] = {}
        for patch in patches:
            self._pools.setdefault((patch.op, patch.domain), []).append(patch)

    def pool(self, op: str, domain: str) -> list[Patch]:
        return self._pools.get((op, domain), [])

    def counts(self) -> dict[str, dict[str, int]]:
        """Patches per op and domain (for the telemetry)."""
        counts: dict[str, dict[str, int]] = {op: {} for op in PASTE_OPS}
        for (op, domain), patches in sorted(self._pools.items()):
            counts[op][domain] = len(patches)
        return counts

    @staticmethod
    def pixels(patch: Patch) -> Image.Image:
        with Image.open(patch.image) as image:
            return image.convert("RGB").crop(patch.box)

    def paste(
        self, op: str, image: Image.Image, record: dict, cfg: Mapping[str, Any], rng: random.Random, tally: Tally
    ) -> tuple[Image.Image, dict]:
        """Paste `cfg[op]["pastes"]` patches of the record's domain onto `image` (the record's, after the
        geometric ops); `cfg` is the whole augmentation section. The inputs are not modified."""
        settings = cfg[op]
        pool = self.pool(op, record["domain"])
        if not pool:
            tally.paste_skipped["no_patch"] += 1
            return image, record
        width, height = image.size
        objects = list(record["objects"])
        image = image.copy()
        pasted = 0
        for _ in range(settings["pastes"]):
            patch = pool[rng.randrange(len(pool))]
            rect = _place(patch, objects, width, height, settings, rng)
            if rect is None:
                tally.paste_skipped["no_room"] += 1
                continue
            pixels = self.pixels(patch)
            size = (rect[2] - rect[0], rect[3] - rect[1])
            if pixels.size != size:
                pixels = pixels.resize(size, Image.Resampling.BICUBIC)
            image.paste(pixels, rect[:2])
            objects = _occlude(objects, rect, width, height, cfg["occlusion"]["min_coverage"], tally)
            added = _moved_objects(patch, rect, width, height)
            tally.objects["pasted"] += len(added)
            objects += added
            pasted += 1
        if not pasted:
            return image, record
        tally.ops[op] += 1
        tally.objects["out"] += len(objects) - len(record["objects"])
        objects.sort(key=lambda o: sort_key(object_kind(o), o[object_kind(o)]))
        out = copy.deepcopy({**record, "objects": objects})  # no object shared with the input
        out["summary"] = rebuilt_summary(record, objects)
        return image, out


# --- building the bank ---------------------------------------------------------------------------


def build_bank(samples: Iterable[tuple[Mapping[str, Any], Path]], cfg: Mapping[str, Any]) -> PatchBank:
    """The patches of every op whose probability is above 0, from (record, image path) pairs of the
    training split as prepared for training (record geometry in that image's pixels)."""
    patches: list[Patch] = []
    for record, image in samples:
        if not record["summary"].startswith("{"):
            continue  # a legacy ×N summary (no key=value descs) or 无关图片 (no objects)
        for op in PASTE_OPS:
            if cfg[op]["prob"] <= 0:
                continue
            for rect, members in _FINDERS[op](record, cfg[op]):
                objects = _relative(record["objects"], members, rect)
                patches.append(Patch(op, record["domain"], Path(image), rect, objects, record["sample_id"]))
    return PatchBank(patches)


def _box(obj: Mapping[str, Any]) -> tuple[float, float, float, float]:
    return bbox_of(object_points(obj))


def _complete(obj: Mapping[str, Any], width: int, height: int) -> bool:
    """Whole, and known to be: not marked partial, clear of the border, of positive size."""
    if f"{VISIBILITY}={PARTIAL}" in obj["desc"].split(","):
        return False
    x1, y1, x2, y2 = _box(obj)
    if not (0 < x1 and 0 < y1 and x2 < width and y2 < height):
        return False
    points = object_points(obj)
    return polyline_length(points) > 0 if object_kind(obj) == "line" else polygon_area(points) > 0


def _grow(box: Sequence[float], margin: float, width: int, height: int) -> Rect:
    x1, y1, x2, y2 = box
    return (
        max(0, math.floor(x1 - margin)),
        max(0, math.floor(y1 - margin)),
        min(width, math.ceil(x2 + margin)),
        min(height, math.ceil(y2 + margin)),
    )


def _meets(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _alone(rect: Rect, members: set[int], objects: Sequence[Mapping[str, Any]]) -> bool:
    """Every object of the image but `members` misses `rect` or holds all of it."""
    rect_area = (rect[2] - rect[0]) * (rect[3] - rect[1])
    for index, obj in enumerate(objects):
        if index in members:
            continue
        kept, fraction = _inside(obj, rect)
        if fraction <= 0:
            continue
        if object_kind(obj) == "line" or polygon_area(kept) < rect_area * _WHOLE:
            return False
    return True


def _small_objects(record: Mapping[str, Any], settings: Mapping[str, Any]) -> list[tuple[Rect, list[int]]]:
    width, height, objects = record["width"], record["height"], record["objects"]
    found = []
    for index, obj in enumerate(objects):
        if object_kind(obj) == "line" or not _complete(obj, width, height):
            continue
        box = _box(obj)
        if max(box[2] - box[0], box[3] - box[1]) > settings["max_size"]:
            continue
        rect = _grow(box, settings["context"], width, height)
        if _alone(rect, {index}, objects):
            found.append((rect, [index]))
    return found


def _clusters(record: Mapping[str, Any], settings: Mapping[str, Any]) -> list[tuple[Rect, list[int]]]:
    width, height, objects = record["width"], record["height"], record["objects"]
    boxes = [_box(obj) for obj in objects]
    found, seen = [], set()
    for seed, obj in enumerate(objects):
        if not _complete(obj, width, height):
            continue
        x1, y1, x2, y2 = boxes[seed]
        r = settings["radius"]
        reach = (x1 - r, y1 - r, x2 + r, y2 + r)
        members = [i for i, box in enumerate(boxes) if i == seed or _meets(box, reach)]
        key = tuple(members)
        if key in seen or not settings["min_objects"] <= len(members) <= settings["max_objects"]:
            continue
        seen.add(key)
        if not all(_complete(objects[i], width, height) for i in members):
            continue
        union = bbox_of([p for i in members for p in object_points(objects[i])])
        rect = _grow(union, settings["context"], width, height)
        if max(rect[2] - rect[0], rect[3] - rect[1]) <= settings["max_size"] and _alone(rect, set(members), objects):
            found.append((rect, members))
    return found


def _lines(record: Mapping[str, Any], settings: Mapping[str, Any]) -> list[tuple[Rect, list[int]]]:
    width, height, objects = record["width"], record["height"], record["objects"]
    found = []
    for index, obj in enumerate(objects):
        if object_kind(obj) != "line" or not _complete(obj, width, height):
            continue
        if not settings["min_length"] <= polyline_length(object_points(obj)) <= settings["max_length"]:
            continue
        rect = _grow(_box(obj), settings["context"], width, height)
        if _alone(rect, {index}, objects):
            found.append((rect, [index]))
    return found


_FINDERS = {
    "small_object_zoom_paste": _small_objects,
    "object_cluster_copy_paste": _clusters,
    "line_segment_copy_paste": _lines,
}


def _relative(objects: Sequence[Mapping[str, Any]], members: list[int], rect: Rect) -> tuple[PatchObject, ...]:
    return tuple(
        PatchObject(
            object_kind(objects[i]),
            tuple((x - rect[0], y - rect[1]) for x, y in object_points(objects[i])),
            objects[i]["desc"],
        )
        for i in members
    )


# --- pasting ---------------------------------------------------------------------------------------


def _place(
    patch: Patch, objects: list[dict], width: int, height: int, settings: Mapping[str, Any], rng: random.Random
) -> Rect | None:
    """Where the scaled patch goes: up to `max_attempts` draws of (scale, x, y); None when none fits."""
    pw, ph = patch.size
    for _ in range(settings["max_attempts"]):
        s = rng.uniform(*settings["scale"])
        w, h = max(1, round(pw * s)), max(1, round(ph * s))
        if w > width or h > height:
            continue
        x, y = rng.randint(0, width - w), rng.randint(0, height - h)
        rect = (x, y, x + w, y + h)
        if all(1 - _outside(obj, rect, width, height)[1] <= settings["max_hidden"] for obj in objects):
            return rect
    return None


def _moved_objects(patch: Patch, rect: Rect, width: int, height: int) -> list[dict]:
    """The patch's objects in the image: scaled with the patch, moved to `rect`."""
    pw, ph = patch.size
    sx, sy = (rect[2] - rect[0]) / pw, (rect[3] - rect[1]) / ph
    moved = []
    for obj in patch.objects:
        points = [(rect[0] + x * sx, rect[1] + y * sy) for x, y in obj.points]
        try:
            entry = geometry_entry(obj.kind, clamp_round(points, width, height))
        except SampleError:
            continue  # a patch shrunk so far that the object collapses on the pixel grid: not pasted
        entry["desc"] = obj.desc
        moved.append(entry)
    return moved


def _occlude(objects: list[dict], rect: Rect, width: int, height: int, min_coverage: float, tally: Tally) -> list[dict]:
    """The objects as they show around a patch pasted over `rect`."""
    kept = []
    for obj in objects:
        points, fraction = _outside(obj, rect, width, height)
        if fraction >= _WHOLE:
            kept.append(obj)
            continue
        visible = keep_visible(obj, object_kind(obj), points, fraction, width, height, min_coverage)
        tally.cut(fraction, visible, obj["desc"])
        if visible is not None:
            kept.append(visible)
    return kept


def _clip_rect(points: Sequence[Point], rect: Sequence[float]) -> list[Point]:
    x0, y0 = rect[0], rect[1]
    shifted = clip_polygon([(x - x0, y - y0) for x, y in points], rect[2] - x0, rect[3] - y0)
    return [(x + x0, y + y0) for x, y in shifted]


def _inside(obj: Mapping[str, Any], rect: Rect) -> tuple[list[Point], float]:
    """What of `obj` lies in `rect` (a polygon, or the runs' points of a line) and its fraction."""
    points = object_points(obj)
    if object_kind(obj) == "line":
        runs = _line_runs(points, rect, inside=True)
        return [p for run in runs for p in run], _ratio(sum(map(polyline_length, runs)), polyline_length(points))
    kept = _clip_rect(points, rect)
    return kept, _ratio(polygon_area(kept), polygon_area(points))


def _outside(obj: Mapping[str, Any], rect: Rect, width: int, height: int) -> tuple[list[Point], float]:
    """The visible rest of `obj` around `rect` and its visible fraction (area or length).

    A box becomes the box of what is visible; a polygon is clipped only where a single piece of it
    is visible (the patch covers one side of it); with a hole in it, its outline stays as it was.
    A line keeps its longest visible run.
    """
    points = object_points(obj)
    if object_kind(obj) == "line":
        runs = _line_runs(points, rect, inside=False)
        longest = max(runs, key=polyline_length, default=[])
        return longest, _ratio(sum(map(polyline_length, runs)), polyline_length(points))
    x1, y1, x2, y2 = rect
    around = ((0, 0, x1, height), (x2, 0, width, height), (x1, 0, x2, y1), (x1, y2, x2, height))
    pieces = [piece for r in around if (piece := _clip_rect(points, r)) and polygon_area(piece) > 0]
    fraction = _ratio(sum(map(polygon_area, pieces)), polygon_area(points))
    if object_kind(obj) == "bbox_2d":
        return [p for piece in pieces for p in piece], fraction
    return (pieces[0] if len(pieces) == 1 else points), fraction


def _line_runs(points: Sequence[Point], rect: Rect, *, inside: bool) -> list[list[Point]]:
    """The runs of a polyline inside `rect`, or outside it, in order."""
    x0, y0, w, h = rect[0], rect[1], rect[2] - rect[0], rect[3] - rect[1]
    runs: list[list[Point]] = []
    open_run = False  # the previous piece ended at its segment's end, so a run may continue
    for a, b in zip(points, points[1:]):
        span = clip_segment((a[0] - x0, a[1] - y0), (b[0] - x0, b[1] - y0), w, h)
        if span is not None and span[1] <= span[0]:
            span = None  # touches the rectangle at one point: nothing inside
        if inside:
            pieces = [span] if span else []
        else:
            pieces = [(0.0, 1.0)] if span is None else [(0.0, span[0]), (span[1], 1.0)]
        open_next = False
        for t0, t1 in pieces:
            if t1 <= t0:
                continue
            start, end = _lerp(a, b, t0), _lerp(a, b, t1)
            if open_run and t0 == 0:  # continues the run the previous segment ended in
                runs[-1].append(end)
            else:
                runs.append([start, end])
            open_next = t1 == 1
        open_run = open_next
    return runs


def _lerp(a: Point, b: Point, t: float) -> Point:
    return (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0
