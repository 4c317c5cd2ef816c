"""Tests for vlqc.data.geometry: EXIF orientation against real pixels, resize, canonical order."""

from __future__ import annotations

import io
import math
import random

import pytest
from PIL import Image, ImageOps

from vlqc.data import geometry as g

RAW_W, RAW_H = 40, 24
ORIENTATIONS = range(1, 9)


def _coded_image() -> Image.Image:
    """Every raw pixel (i, j) gets its own colour (5i, 10j, 128), so any pixel can be traced."""
    image = Image.new("RGB", (RAW_W, RAW_H))
    image.putdata([(5 * i, 10 * j, 128) for j in range(RAW_H) for i in range(RAW_W)])
    return image


def _with_orientation(image: Image.Image, orientation: int, fmt: str) -> Image.Image:
    exif = image.getexif()
    exif[g.EXIF_ORIENTATION_TAG] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, exif=exif.tobytes())
    buffer.seek(0)
    return Image.open(buffer)


# --- EXIF -----------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_orient_points_matches_exif_transpose_for_every_pixel(orientation):
    # PNG keeps pixels exact, so every one of the 960 raw pixels is checked.
    stored = _with_orientation(_coded_image(), orientation, "PNG")
    assert g.exif_orientation(stored) == orientation
    shown = ImageOps.exif_transpose(stored)
    assert shown.size == g.oriented_size(RAW_W, RAW_H, orientation)

    centres = [(i + 0.5, j + 0.5) for j in range(RAW_H) for i in range(RAW_W)]
    mapped = g.orient_points(centres, orientation, RAW_W, RAW_H)
    for (cx, cy), (mx, my) in zip(centres, mapped):
        i, j = int(cx), int(cy)
        assert shown.getpixel((math.floor(mx), math.floor(my))) == (
            5 * i,
            10 * j,
            128,
        ), f"raw pixel {(i, j)} misplaced for orientation {orientation}"


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_marker_survives_jpeg_roundtrip(orientation):
    # A 4x4 white marker on black at raw pixels x 30..33, y 2..5: JPEG blurs edges,
    # so the check is the brightest pixel's position, well inside the marker.
    raw = Image.new("RGB", (RAW_W, RAW_H))
    raw.paste((255, 255, 255), (30, 2, 34, 6))
    stored = _with_orientation(raw, orientation, "JPEG")
    assert g.exif_orientation(stored) == orientation
    shown = ImageOps.exif_transpose(stored).convert("L")

    ((mx, my),) = g.orient_points([(32.0, 4.0)], orientation, RAW_W, RAW_H)  # marker centre
    w, h = shown.size
    brightest = max(((x, y) for y in range(h) for x in range(w)), key=lambda p: shown.getpixel(p))
    assert abs(brightest[0] + 0.5 - mx) <= 2 and abs(brightest[1] + 0.5 - my) <= 2


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_full_image_corners_map_to_full_oriented_frame(orientation):
    ow, oh = g.oriented_size(RAW_W, RAW_H, orientation)
    mapped = g.orient_points([(0, 0), (RAW_W, RAW_H)], orientation, RAW_W, RAW_H)
    assert g.bbox_of(mapped) == (0, 0, ow, oh)


def test_exif_orientation_absent_is_one():
    assert g.exif_orientation(Image.new("RGB", (4, 3))) == 1


@pytest.mark.parametrize("value", [0, 9, 300, "6", True])
def test_exif_orientation_invalid_is_one(value):
    image = Image.new("RGB", (4, 3))
    image.getexif()[g.EXIF_ORIENTATION_TAG] = value
    assert g.exif_orientation(image) == 1


@pytest.mark.parametrize("orientation", [0, 9])
def test_orient_rejects_invalid_orientation(orientation):
    with pytest.raises(ValueError):
        g.orient_points([(1, 1)], orientation, 10, 10)
    with pytest.raises(ValueError):
        g.oriented_size(10, 10, orientation)


# --- rescale and clamp ------------------------------------------------------------------


def test_scale_points():
    assert g.scale_points([(10, 20), (0, 0), (1200, 1600)], 0.5, 0.25) == [
        (5, 5),
        (0, 0),
        (600, 400),
    ]


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        ((-3.2, -0.4), (0, 0)),  # negative -> 0
        ((105.0, 77.7), (100, 50)),  # beyond the far edges -> the edges
        ((100.4, 50.4), (100, 50)),
        ((2.5, 3.5), (3, 4)),  # half away from zero, not banker's (2, 4)
        ((2.49, 0.5), (2, 1)),
        ((-0.5, 49.5), (0, 50)),
    ],
)
def test_clamp_round(point, expected):
    assert g.clamp_round([point], 100, 50) == [expected]


def test_clamp_round_returns_ints():
    ((x, y),) = g.clamp_round([(1.7, 2.2)], 10, 10)
    assert type(x) is int and type(y) is int


def test_bbox_of():
    assert g.bbox_of([(5, 9), (1, 12), (7, 3)]) == (1, 3, 7, 12)
    with pytest.raises(ValueError):
        g.bbox_of([])


# --- smart_resize -----------------------------------------------------------------------

CAP = 786432
F = 32


def _random_sizes(seed: int, n: int, low: int, high: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(low, high), rng.randint(low, high)) for _ in range(n)]


def _extreme_sizes() -> list[tuple[int, int]]:
    rng = random.Random(7)
    sizes = [(1, 1), (1, 200), (200, 1), (31, 33), (20000, 100), (100, 20000), (65536, 65536)]
    for _ in range(300):
        short = rng.randint(1, 5000)
        long = min(short * 200, rng.randint(short, 100000))
        sizes.append((short, long) if rng.random() < 0.5 else (long, short))
    return sizes


@pytest.mark.parametrize(("width", "height"), _random_sizes(1, 400, 480, 2000) + _extreme_sizes())
def test_smart_resize_invariants(width, height):
    w, h = g.smart_resize(width, height, F, CAP)
    assert w % F == 0 and h % F == 0
    assert w >= F and h >= F
    assert w * h <= CAP
    # The output is itself valid, so resizing it again changes nothing. (Near a
    # 200:1 input the floor can push the output past 200:1, which is then refused.)
    if w * h >= F * F * 4 and max(w, h) / min(w, h) <= g.MAX_ASPECT_RATIO:
        assert g.smart_resize(w, h, F, CAP) == (w, h)


@pytest.mark.parametrize(("width", "height"), _random_sizes(2, 400, 480, 2000))
def test_smart_resize_keeps_aspect_and_scale(width, height):
    w, h = g.smart_resize(width, height, F, CAP)
    # Each side is within one factor of the ideal (uniformly scaled) side.
    scale = min(1.0, math.sqrt(CAP / (width * height)))
    assert abs(w - width * scale) <= F and abs(h - height * scale) <= F
    assert abs(math.log((w / h) / (width / height))) < 0.1
    # Near the cap when shrinking: the floor loses at most one factor per side.
    if scale < 1:
        assert w * h > (width * scale - F) * (height * scale - F)


@pytest.mark.parametrize(("width", "height"), [(480, 640), (1024, 768), (32, 128), (64, 64), (886, 886)])
def test_smart_resize_idempotent_on_valid_sizes(width, height):
    valid = (width // F * F, height // F * F)
    assert g.smart_resize(*valid, F, CAP) == valid


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1200, 1600), (768, 1024)),  # shrunk to exactly the cap, 3:4 kept
        ((500, 500), (512, 512)),  # rounded to the nearest multiple
        ((40, 40), (64, 64)),  # grown to min_pixels = 4 * 32 * 32
        ((1, 200), (32, 192)),  # a side never goes below factor
    ],
)
def test_smart_resize_examples(size, expected):
    assert g.smart_resize(*size, F, CAP) == expected


@pytest.mark.parametrize(("size", "expected"), [((453, 2265), (448, 2240)), ((575, 1840), (560, 1792))])
def test_smart_resize_exact_scale_survives_float_noise(size, expected):
    # Mathematically each side lands on a whole number of factors (area == cap);
    # floats give e.g. 15.999999999999998 factors, which a bare floor would cut.
    assert g.smart_resize(*size, factor=28, max_pixels=1003520) == expected


def test_smart_resize_small_cap_with_extreme_aspect_stays_under_cap():
    # The short side is lifted to factor, which alone would exceed the cap.
    w, h = g.smart_resize(20000, 100, F, max_pixels=8192, min_pixels=1024)
    assert (w, h) == (256, 32) and w * h <= 8192


@pytest.mark.parametrize("size", [(0, 10), (10, 0), (-5, 10), (201, 1), (1, 201), (20100, 100)])
def test_smart_resize_rejects(size):
    with pytest.raises(ValueError):
        g.smart_resize(*size, F, CAP)


def test_smart_resize_accepts_aspect_200():
    assert g.smart_resize(20000, 100, F, CAP)[0] % F == 0


# --- canonical order ---------------------------------------------------------------------

# A pentagon listed clockwise on screen (y down), starting at its min-(y, x) vertex.
PENTAGON_CW = [(40, 10), (80, 30), (70, 70), (20, 60), (10, 30)]


def _rotations(ring):
    return [ring[i:] + ring[:i] for i in range(len(ring))]


@pytest.mark.parametrize("closed", [False, True])
@pytest.mark.parametrize("ring", _rotations(PENTAGON_CW) + _rotations(PENTAGON_CW[::-1]))
def test_canonical_polygon_from_any_rotation_and_winding(ring, closed):
    points = ring + [ring[0]] if closed else ring
    assert g.canonical_polygon(points) == PENTAGON_CW


def test_canonical_polygon_is_clockwise_on_screen():
    # Right along the top edge, then down: clockwise with y pointing down.
    assert g.canonical_polygon([(0, 0), (0, 10), (10, 10), (10, 0)]) == [
        (0, 0),
        (10, 0),
        (10, 10),
        (0, 10),
    ]


def test_canonical_polygon_start_breaks_y_tie_by_x():
    quad = [(50, 5), (90, 40), (30, 40), (10, 5)]
    assert g.canonical_polygon(quad)[0] == (10, 5)


def test_canonical_polygon_drops_duplicates():
    assert g.canonical_polygon([(0, 0), (0, 0), (10, 0), (10, 10), (10, 10), (0, 10), (0, 0)]) == [
        (0, 0),
        (10, 0),
        (10, 10),
        (0, 10),
    ]


@pytest.mark.parametrize("ring", _rotations(PENTAGON_CW[::-1]))
def test_canonical_polygon_idempotent(ring):
    once = g.canonical_polygon(ring)
    assert g.canonical_polygon(once) == once


# Two triangles touching at (10, 0): the min-(y, x) vertex occurs twice.
BOWTIE = [(10, 0), (20, 10), (10, 20), (10, 0), (0, 10), (5, 30)]


@pytest.mark.parametrize("ring", _rotations(BOWTIE))
def test_canonical_polygon_repeated_min_vertex_is_rotation_invariant(ring):
    assert g.canonical_polygon(ring) == g.canonical_polygon(BOWTIE)


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([(5, 50), (10, 20), (8, 2)], [(8, 2), (10, 20), (5, 50)]),  # bottom-up -> reversed
        ([(8, 2), (10, 20), (5, 50)], [(8, 2), (10, 20), (5, 50)]),  # already top-down
        ([(90, 10), (50, 40), (0, 10)], [(0, 10), (50, 40), (90, 10)]),  # same y: left end first
        ([(1, 1), (1, 1), (4, 5), (4, 5), (9, 9)], [(1, 1), (4, 5), (9, 9)]),  # duplicates
    ],
)
def test_canonical_line(points, expected):
    line = g.canonical_line(points)
    assert line == expected
    assert g.canonical_line(line) == line


def test_polygon_area():
    square = [(0, 0), (10, 0), (10, 10), (0, 10)]
    assert g.polygon_area(square) == 100
    assert g.polygon_area(square[::-1]) == 100
    assert g.polygon_area(square + [square[0]]) == 100
    assert g.polygon_area([(0, 0), (4, 0), (0, 3)]) == 6


# --- sort order ---------------------------------------------------------------------------


def test_sort_key_top_to_bottom_then_left_to_right():
    objects = {
        "bottom": ("bbox_2d", [0, 500, 100, 600]),
        "top_right": ("poly", [800, 0, 900, 0, 900, 100, 800, 100]),
        "top_left": ("bbox_2d", [0, 0, 100, 100]),
        "middle": ("line", [400, 200, 450, 300]),
    }
    order = sorted(objects, key=lambda name: g.sort_key(*objects[name]))
    assert order == ["top_left", "top_right", "middle", "bottom"]


def test_sort_key_uses_aabb_centre_not_first_point():
    # The line starts higher, but its box centre (y=300) is below the box's (y=150).
    line = ("line", [0, 0, 0, 600])
    box = ("bbox_2d", [50, 100, 60, 200])
    assert g.sort_key(*box) < g.sort_key(*line)


def test_sort_key_ties_are_deterministic():
    # Same AABB centre: kind order, then coordinates, decide; input order does not.
    items = [
        ("line", [0, 0, 100, 100]),
        ("bbox_2d", [0, 0, 100, 100]),
        ("poly", [0, 0, 100, 0, 100, 100, 0, 100]),
        ("bbox_2d", [40, 40, 60, 60]),
    ]
    expected = [items[1], items[3], items[2], items[0]]
    for seed in range(5):
        shuffled = items[:]
        random.Random(seed).shuffle(shuffled)
        assert sorted(shuffled, key=lambda o: g.sort_key(*o)) == expected


@pytest.mark.parametrize(("kind", "coords"), [("circle", [0, 0, 1, 1]), ("line", [0, 0, 1])])
def test_sort_key_rejects_bad_input(kind, coords):
    with pytest.raises(ValueError):
        g.sort_key(kind, coords)
