"""Pure geometry helpers for annotation post-processing.

Coordinate convention (used by every function here): continuous pixel-edge
coordinates. Pixel (i, j) covers the square [i, i+1) x [j, j+1), so a point lies
in [0, width] x [0, height] and a box over the whole image is (0, 0, width, height).
A bbox is (x1, y1, x2, y2) with x1 <= x2, y1 <= y2 on that same grid (x2, y2 are
edges, not the last pixel index). y points down, as in image files.

Order of post-processing (docs/export-format.md#post-processing-order): EXIF orientation (`orient_points`),
rescale to the real image size and then to the `smart_resize` size
(`scale_points`), then `clamp_round`, then canonical vertex order and object sort.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

from vlqc.data.objects import GEOMETRY_KINDS, Point

EXIF_ORIENTATION_TAG = 0x0112

MAX_ASPECT_RATIO = 200


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8) of `image`; 1 when the tag is absent or invalid."""
    value = image.getexif().get(EXIF_ORIENTATION_TAG)
    # bool is an int subclass but never a real orientation value.
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 8:
        return value
    return 1


def _check_orientation(orientation: int) -> None:
    if orientation not in range(1, 9):
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation!r}")


def oriented_size(raw_w: int, raw_h: int, orientation: int) -> tuple[int, int]:
    """(width, height) of the displayed image; orientations 5..8 swap the sides."""
    _check_orientation(orientation)
    return (raw_h, raw_w) if orientation >= 5 else (raw_w, raw_h)


def orient_points(points: Sequence[Point], orientation: int, raw_w: float, raw_h: float) -> list[Point]:
    """Map points from the stored (raw) frame to the displayed frame.

    Matches `PIL.ImageOps.exif_transpose` pixel for pixel: the centre of raw pixel
    (i, j), (i + 0.5, j + 0.5), maps to the centre of the pixel it lands on.
    """
    _check_orientation(orientation)
    w, h = raw_w, raw_h
    maps = {
        1: lambda x, y: (x, y),
        2: lambda x, y: (w - x, y),  # FLIP_LEFT_RIGHT
        3: lambda x, y: (w - x, h - y),  # ROTATE_180
        4: lambda x, y: (x, h - y),  # FLIP_TOP_BOTTOM
        5: lambda x, y: (y, x),  # TRANSPOSE
        6: lambda x, y: (h - y, x),  # ROTATE_270 (90° clockwise)
        7: lambda x, y: (h - y, w - x),  # TRANSVERSE
        8: lambda x, y: (y, w - x),  # ROTATE_90 (90° counter-clockwise)
    }
    transform = maps[orientation]
    return [transform(x, y) for x, y in points]


def scale_points(points: Sequence[Point], sx: float, sy: float) -> list[Point]:
    """Scale x by `sx` and y by `sy` (exact on the edge grid: (w, h) -> (w*sx, h*sy))."""
    return [(x * sx, y * sy) for x, y in points]


def _round_half_away(value: float) -> int:
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


# sqrt/division noise must not move a side by a whole factor: for 453x2265 with
# factor 28 and a 1003520 cap the exact short side is 16 factors, but floats give
# 15.999999999999998 and a bare floor would lose 28 px.
_EPS = 1e-9


def _floor(value: float) -> int:
    return math.floor(value + _EPS)


def _ceil(value: float) -> int:
    return math.ceil(value - _EPS)


def smart_resize(
    width: int,
    height: int,
    factor: int,
    max_pixels: int,
    min_pixels: int | None = None,
) -> tuple[int, int]:
    """Target (width, height): multiples of `factor`, area <= `max_pixels`.

    The Qwen2-VL idea: round each side to the nearest multiple of `factor`; if the
    area is over the cap, scale both sides by the same ratio and floor; if it is
    under `min_pixels` (default factor*factor*4), scale up and ceil. A side is never
    below `factor`. When that floor of `factor` pushes the area over the cap again
    (extreme aspect ratios with a small cap), the longer side is shrunk until it fits.
    """
    if min_pixels is None:
        min_pixels = factor * factor * 4
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if factor <= 0 or max_pixels < factor * factor or min_pixels > max_pixels:
        raise ValueError(f"bad resize limits: factor={factor}, min_pixels={min_pixels}, max_pixels={max_pixels}")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio of {width}x{height} exceeds {MAX_ASPECT_RATIO}")

    w = max(factor, _round_half_away(width / factor) * factor)
    h = max(factor, _round_half_away(height / factor) * factor)
    if w * h > max_pixels:
        beta = math.sqrt(width * height / max_pixels)
        w = max(factor, _floor(width / beta / factor) * factor)
        h = max(factor, _floor(height / beta / factor) * factor)
    elif w * h < min_pixels:
        beta = math.sqrt(min_pixels / (width * height))
        w = _ceil(width * beta / factor) * factor
        h = _ceil(height * beta / factor) * factor
    while w * h > max_pixels:
        if w >= h:
            w -= factor
        else:
            h -= factor
    return w, h


def clamp_round(points: Sequence[Point], width: int, height: int) -> list[tuple[int, int]]:
    """Round to integers (half away from zero) and clamp to [0, width] x [0, height].

    The bounds are the edge grid's: x == width is the right edge of the image.
    """
    return [
        (
            min(max(_round_half_away(x), 0), width),
            min(max(_round_half_away(y), 0), height),
        )
        for x, y in points
    ]


def bbox_of(points: Sequence[Point]) -> tuple[float, float, float, float]:
    """Axis-aligned bounding box (x1, y1, x2, y2) of a non-empty point list."""
    if not points:
        raise ValueError("bbox_of needs at least one point")
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    return min(xs), min(ys), max(xs), max(ys)


def _signed_area(points: Sequence[Point]) -> float:
    """Shoelace area; positive means clockwise on screen (y down)."""
    following = list(points[1:]) + list(points[:1])
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, following))


def polygon_area(points: Sequence[Point]) -> float:
    """Absolute shoelace area of the ring (closing vertex optional)."""
    return abs(_signed_area(points))


def _yx(point: Point) -> tuple[float, float]:
    return point[1], point[0]


def canonical_polygon(points: Sequence[Point]) -> list[Point]:
    """Clockwise ring (y down) without duplicates, starting at its min-(y, x) vertex.

    Duplicates are dropped cyclically, so a repeated closing vertex goes too. A
    degenerate ring (zero area) keeps its winding. When the min vertex occurs more
    than once (a self-touching ring), the start giving the smallest (y, x) sequence
    wins, so every rotation of the same ring gives the same result. Vertex-count
    checks are the caller's job.
    """
    ring: list[Point] = []
    for point in points:
        point = (point[0], point[1])
        if not ring or ring[-1] != point:
            ring.append(point)
    while len(ring) > 1 and ring[-1] == ring[0]:
        ring.pop()
    if not ring:
        return []
    if _signed_area(ring) < 0:
        ring.reverse()
    lowest = min(_yx(p) for p in ring)
    starts = [i for i, p in enumerate(ring) if _yx(p) == lowest]
    start = min(starts, key=lambda i: [_yx(p) for p in ring[i:] + ring[:i]])
    return ring[start:] + ring[:start]


def canonical_line(points: Sequence[Point]) -> list[Point]:
    """Polyline without consecutive duplicates, starting at its top-most (then left-most) end."""
    line: list[Point] = []
    for point in points:
        point = (point[0], point[1])
        if not line or line[-1] != point:
            line.append(point)
    if line and _yx(line[-1]) < _yx(line[0]):
        line.reverse()
    return line


def sort_key(kind: str, flat_coords: Sequence[float]) -> tuple:
    """Order objects top-to-bottom, then left-to-right, by AABB centre.

    `flat_coords` is [x1, y1, x2, y2, ...] (a bbox_2d's two corners, or a poly/line's
    vertices). Ties fall back to geometry kind (bbox_2d, poly, line) and then the
    coordinates themselves, so the order never depends on input order.
    """
    if kind not in GEOMETRY_KINDS:
        raise ValueError(f"unknown geometry kind {kind!r}")
    if len(flat_coords) < 2 or len(flat_coords) % 2:
        raise ValueError(f"{kind} needs an even, non-zero number of coordinates")
    points = list(zip(flat_coords[0::2], flat_coords[1::2]))
    x1, y1, x2, y2 = bbox_of(points)
    return ((y1 + y2) / 2, (x1 + x2) / 2, GEOMETRY_KINDS.index(kind), tuple(flat_coords))
