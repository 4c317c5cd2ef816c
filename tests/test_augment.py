"""Augmentation: geometry follows the pixels on a fixed synthetic scene, coverage rules,
summary rebuild, bypass, pixel cap, determinism and the config section."""

from __future__ import annotations

import copy
import json
import os
import random

import numpy as np
import pytest
from conftest import REPO
from PIL import Image, ImageDraw, ImageOps

from vlqc.data.geometry import canonical_polygon, sort_key
from vlqc.data.summary import IRRELEVANT, build_summary
from vlqc.errors import SampleError, SchemaError
from vlqc.schemas import validate
from vlqc.train.augment import augment as run_augment
from vlqc.train.augment import clip_line, clip_polygon, load_config, mark_partial, warp

GOLDEN = REPO / "tests" / "golden" / "augment"
W, H = 320, 256
BACKGROUND = (60, 60, 60)
FILL = (255, 0, 255)
CAP = 1024 * 768  # the training pixel cap the augmentation falls back on
COLOURS = {"BBU设备": (220, 30, 30), "挡风板": (30, 200, 60), "光纤": (40, 60, 230), "BBU安装螺丝": (230, 210, 40)}
RED_BOX = [40, 32, 150, 112]
GREEN_POLY = [190, 40, 290, 60, 280, 130, 200, 110]
BLUE_LINE = [30, 200, 120, 150, 230, 215]
YELLOW_BOX = [250, 170, 290, 230]
LINE_WIDTH = 9
TOLERANCE = 40


def scene() -> tuple[Image.Image, dict]:
    """An asymmetric scene: every object has its own colour, drawn on the pixel-edge grid."""
    image = Image.new("RGB", (W, H), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for box, colour in ((RED_BOX, COLOURS["BBU设备"]), (YELLOW_BOX, COLOURS["BBU安装螺丝"])):
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=colour)
    draw.polygon(list(zip(GREEN_POLY[0::2], GREEN_POLY[1::2])), fill=COLOURS["挡风板"])
    draw.line(list(zip(BLUE_LINE[0::2], BLUE_LINE[1::2])), fill=COLOURS["光纤"], width=LINE_WIDTH, joint="curve")
    poly = [v for p in canonical_polygon(list(zip(GREEN_POLY[0::2], GREEN_POLY[1::2]))) for v in p]
    objects = [
        {"bbox_2d": RED_BOX, "desc": "类别=BBU设备,品牌=华为,可见性=完整"},
        {"poly": poly, "desc": "类别=挡风板,品牌=华为,安装方向=方向正确"},
        {"bbox_2d": YELLOW_BOX, "desc": "类别=BBU安装螺丝,可见性=完整,符合性=符合"},
        {"line": BLUE_LINE, "desc": "类别=光纤,保护措施=有保护,保护细节=蛇形管"},
    ]
    objects.sort(key=lambda o: sort_key(*next((k, v) for k, v in o.items() if k != "desc")))
    record = {
        "sample_id": "scene",
        "images": ["images/scene.jpg"],
        "width": W,
        "height": H,
        "domain": "BBU",
        "objects": objects,
        "summary": build_summary([o["desc"] for o in objects], "BBU"),
        "source": "scene.json",
    }
    validate(record, "sample")
    return image, record


OFF = {name: {"prob": 0.0} for name in ("hflip", "vflip", "rotate", "scale", "crop", "color_jitter", "gamma", "hsv")}


def cfg(**ops) -> dict:
    """Every op off unless given; `fill` is a colour no object has."""
    section = {"bypass_prob": 0.0, "fill": list(FILL), **copy.deepcopy(OFF)}
    for name, values in ops.items():
        if isinstance(values, dict):
            section[name] = {**section[name], **values}
        else:
            section[name] = values
    return load_config(section, CAP)


def augment(config: dict, seed: int = 0) -> tuple[Image.Image, dict]:
    image, record = scene()
    return run_augment(image, record, config, random.Random(seed))


# --- checks of geometry against pixels ---------------------------------------------------


def category(obj: dict) -> str:
    return obj["desc"].split(",")[0].removeprefix("类别=")


def colour_mask(image: Image.Image, colour: tuple[int, int, int]) -> np.ndarray:
    pixels = np.asarray(image, dtype=int)
    return np.abs(pixels - np.array(colour)).max(axis=2) <= TOLERANCE


def mask_bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def near_colour(image: Image.Image, x: float, y: float, colour: tuple[int, int, int]) -> bool:
    """Some pixel of the 3x3 block around (x, y) has `colour`."""
    mask = colour_mask(image, colour)
    i, j = int(x), int(y)
    return bool(mask[max(j - 1, 0) : j + 2, max(i - 1, 0) : i + 2].any())


def assert_geometry_matches_pixels(image: Image.Image, record: dict, centre_check: bool = True) -> None:
    validate(record, "sample")
    assert image.size == (record["width"], record["height"])
    keys = [sort_key(*next((k, v) for k, v in o.items() if k != "desc")) for o in record["objects"]]
    assert keys == sorted(keys), "objects are re-sorted top-to-bottom, left-to-right"
    for obj in record["objects"]:
        colour = COLOURS[category(obj)]
        mask = colour_mask(image, colour)
        if "bbox_2d" in obj:
            box = obj["bbox_2d"]
            assert iou(box, mask_bbox(mask)) >= 0.9, (obj, mask_bbox(mask))
            if centre_check:
                assert near_colour(image, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, colour), obj
        elif "poly" in obj:
            drawn = Image.new("L", image.size, 0)
            ImageDraw.Draw(drawn).polygon(list(zip(obj["poly"][0::2], obj["poly"][1::2])), fill=1)
            drawn = np.asarray(drawn, dtype=bool)
            assert (drawn & mask).sum() / (drawn | mask).sum() >= 0.9, obj
        else:
            points = list(zip(obj["line"][0::2], obj["line"][1::2]))
            for (x0, y0), (x1, y1) in zip(points, points[1:]):
                for t in (0.1, 0.3, 0.5, 0.7, 0.9):
                    assert near_colour(image, x0 + t * (x1 - x0), y0 + t * (y1 - y0), colour), (obj, t)


# --- golden geometry ---------------------------------------------------------------------


def test_scene_itself_passes_the_checks():
    assert_geometry_matches_pixels(*scene())


def test_identity_leaves_pixels_and_record_alone():
    image, record = scene()
    out_image, out_record = run_augment(image, record, cfg(), random.Random(0))
    assert out_image.tobytes() == image.tobytes()
    assert out_record == record


def test_horizontal_flip():
    image, _ = scene()
    out, record = augment(cfg(hflip={"prob": 1.0}))
    assert out.tobytes() == ImageOps.mirror(image).tobytes()
    assert record["objects"][0]["bbox_2d"] == [W - RED_BOX[2], RED_BOX[1], W - RED_BOX[0], RED_BOX[3]]
    assert_geometry_matches_pixels(out, record)


def test_vertical_flip():
    image, _ = scene()
    out, record = augment(cfg(vflip={"prob": 1.0}))
    assert out.tobytes() == ImageOps.flip(image).tobytes()
    line = [o["line"] for o in record["objects"] if "line" in o][0]
    # Canonical direction: the flipped line now starts at its top end, (230, 256-215).
    assert line == [230, 41, 120, 106, 30, 56]
    assert_geometry_matches_pixels(out, record)


def test_rotation_by_90_degrees_is_exact():
    image, _ = scene()
    out, record = augment(cfg(rotate={"prob": 1.0, "degrees": [90, 90]}))
    assert out.size == (H, W)
    assert out.tobytes() == image.transpose(Image.Transpose.ROTATE_90).tobytes()
    red = [o for o in record["objects"] if category(o) == "BBU设备"][0]
    assert red["bbox_2d"] == [RED_BOX[1], W - RED_BOX[2], RED_BOX[3], W - RED_BOX[0]]
    assert_geometry_matches_pixels(out, record)


def test_arbitrary_rotation_expands_the_canvas():
    out, record = augment(cfg(rotate={"prob": 1.0, "degrees": [33, 33]}))
    # The exact canvas is 320cos33°+256sin33° = 407.8 by 320sin33°+256cos33° = 389.0, then ×32 sides.
    assert out.size == (416, 384)
    assert out.getpixel((1, 1)) == FILL and out.getpixel((414, 382)) == FILL
    assert len(record["objects"]) == 4
    assert all("部分" not in o["desc"] for o in record["objects"])
    assert_geometry_matches_pixels(out, record)


def test_scale():
    out, record = augment(cfg(scale={"prob": 1.0, "range": [0.5, 0.5]}))
    assert out.size == (W // 2, H // 2)
    red = [o for o in record["objects"] if category(o) == "BBU设备"][0]
    assert red["bbox_2d"] == [v // 2 for v in RED_BOX]
    assert_geometry_matches_pixels(out, record)


@pytest.mark.parametrize("seed", range(6))
def test_roi_crop(seed):
    _, source = scene()
    out, record = augment(cfg(crop={"prob": 1.0, "size": [0.6, 0.6], "min_coverage": 0.3}), seed)
    assert out.size == (192, 160)  # 0.6 x 320x256, rounded to x32
    assert record["objects"], "the window holds the centre of one object"
    assert_geometry_matches_pixels(out, record, centre_check=False)
    # A dropped object shows less than min_coverage of its area (scale is 1 here).
    kept = {category(o) for o in record["objects"]}
    areas = {"BBU设备": 110 * 80, "BBU安装螺丝": 40 * 60}
    for name, area in areas.items():
        if name not in kept:
            assert colour_mask(out, COLOURS[name]).sum() < 0.3 * area + 150
    assert len(record["objects"]) <= len(source["objects"])


def test_composed_chain_matches_pixels_and_golden_record():
    config = cfg(
        hflip={"prob": 1.0},
        rotate={"prob": 1.0, "degrees": [25, 25]},
        scale={"prob": 1.0, "range": [0.8, 0.8]},
        crop={"prob": 1.0, "size": [0.75, 0.75], "min_coverage": 0.3},
    )
    out, record = augment(config, seed=3)
    assert_geometry_matches_pixels(out, record, centre_check=False)
    golden = GOLDEN / "composed_chain.json"
    if os.environ.get("VLQC_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    assert record == json.loads(golden.read_text(encoding="utf-8"))


# --- coverage, 可见性, summary -------------------------------------------------------------


def crop_window(x0: int, y0: int, w: int, h: int, min_coverage: float) -> tuple[Image.Image, dict]:
    image, record = scene()
    matrix = np.array([[1.0, 0, -x0], [0, 1, -y0], [0, 0, 1]])
    return warp(image, record, matrix, (w, h), max_pixels=W * H, factor=32, fill=FILL, min_coverage=min_coverage)


def test_cut_object_is_kept_and_marked_partial_above_min_coverage():
    # The window x in [96, 320] shows 54 of the red box's 110 px width (49%).
    out, record = crop_window(96, 0, 224, 256, min_coverage=0.45)
    by_category = {category(o): o for o in record["objects"]}
    assert by_category["BBU设备"] == {"bbox_2d": [0, 32, 54, 112], "desc": "类别=BBU设备,品牌=华为,可见性=部分"}
    assert by_category["BBU安装螺丝"]["desc"] == "类别=BBU安装螺丝,可见性=完整,符合性=符合"
    # The line is cut too, but 光纤 has no 可见性 attribute.
    assert by_category["光纤"]["desc"] == "类别=光纤,保护措施=有保护,保护细节=蛇形管"
    assert by_category["光纤"]["line"][:2] == [0, 163]  # y = 200 - 50·66/90
    assert record["summary"] == build_summary([o["desc"] for o in record["objects"]], "BBU")
    assert '"可见性": {"部分": 1}' in record["summary"]
    assert_geometry_matches_pixels(out, record, centre_check=False)


def test_object_under_min_coverage_is_dropped_and_summary_rebuilt():
    _, source = scene()
    out, record = crop_window(96, 0, 224, 256, min_coverage=0.55)
    assert "BBU设备" not in {category(o) for o in record["objects"]}
    assert len(record["objects"]) == 3
    assert "BBU设备" in source["summary"] and "BBU设备" not in record["summary"]
    assert record["summary"] == build_summary([o["desc"] for o in record["objects"]], "BBU")
    assert_geometry_matches_pixels(out, record)


def test_visibility_is_inserted_in_key_order_when_missing():
    # y in [64, 256]: the red box keeps 60% and the green polygon is cut as well.
    out, record = crop_window(0, 64, 320, 192, min_coverage=0.3)
    by_category = {category(o): o for o in record["objects"]}
    assert by_category["挡风板"]["desc"] == "类别=挡风板,品牌=华为,可见性=部分,安装方向=方向正确"
    assert by_category["BBU设备"]["bbox_2d"] == [40, 0, 150, 48]
    assert_geometry_matches_pixels(out, record, centre_check=False)


def test_line_cut_in_two_keeps_the_longest_run():
    # y in [160, 256] shows both ends of the line but not its middle vertex (120, 150):
    # 82 px of the first segment and 108 px of the second, which is kept.
    out, record = crop_window(0, 160, 320, 96, min_coverage=0.3)
    line = [o for o in record["objects"] if "line" in o][0]
    assert line == {"line": [137, 0, 230, 55], "desc": "类别=光纤,保护措施=有保护,保护细节=蛇形管"}
    assert_geometry_matches_pixels(out, record, centre_check=False)


def test_empty_window_drops_everything_and_gives_irrelevant():
    out, record = crop_window(0, 0, 32, 32, min_coverage=0.0)
    assert out.size == (64, 64)  # smart_resize's minimum area
    assert record["objects"] == [] and record["summary"] == IRRELEVANT
    validate(record, "sample")


def test_legacy_summary_is_kept_when_nothing_changes_and_refused_otherwise():
    image, record = scene()
    record["summary"] = "BBU设备×1，挡风板×1"
    _, flipped = run_augment(image, record, cfg(hflip={"prob": 1.0}), random.Random(0))
    assert flipped["summary"] == record["summary"]
    matrix = np.array([[1.0, 0, -96], [0, 1, 0], [0, 0, 1]])
    with pytest.raises(SampleError, match="legacy summary"):
        warp(image, record, matrix, (224, 256), max_pixels=W * H, factor=32, fill=FILL, min_coverage=0.55)


@pytest.mark.parametrize(
    "desc, expected",
    [
        ("类别=BBU设备,品牌=华为,可见性=完整", "类别=BBU设备,品牌=华为,可见性=部分"),
        ("类别=BBU设备,品牌=华为,挡风板需求=免装", "类别=BBU设备,品牌=华为,可见性=部分,挡风板需求=免装"),
        ("类别=BBU设备", "类别=BBU设备,可见性=部分"),
        ("类别=ODF端光纤插头,符合性=符合", "类别=ODF端光纤插头,可见性=部分,符合性=符合"),
        ("类别=光纤,保护措施=无保护", "类别=光纤,保护措施=无保护"),
        ("类别=标签,文本=A1,组=1", "类别=标签,文本=A1,组=1"),
    ],
)
def test_mark_partial(desc, expected):
    assert mark_partial(desc) == expected


def test_clipping_helpers():
    square = [(-10, -10), (10, -10), (10, 10), (-10, 10)]
    assert sorted(clip_polygon(square, 100, 100)) == [(0, 0), (0, 10), (10, 0), (10, 10)]
    assert clip_polygon([(200, 200), (300, 200), (300, 300)], 100, 100) == []
    # In, out and back in: two runs, the longer one second.
    runs = clip_line([(10, 50), (150, 50), (150, 90), (20, 90)], 100, 100)
    assert runs == [[(10, 50), (100, 50)], [(100.0, 90), (20, 90)]]


# --- photometric -------------------------------------------------------------------------


def test_photometric_ops_change_pixels_not_geometry():
    _, source = scene()
    out, record = augment(cfg(gamma={"prob": 1.0, "range": [0.5, 0.5]}))
    assert out.getpixel((5, 5)) == (124, 124, 124)  # 255·(60/255)^0.5
    assert record["objects"] == source["objects"]
    brighter = {"prob": 1.0, "brightness": [1.5, 1.5], "contrast": [1, 1], "saturation": [1, 1]}
    out, _ = augment(cfg(color_jitter=brighter))
    assert out.getpixel((5, 5)) == (90, 90, 90)
    out, _ = augment(cfg(hsv={"prob": 1.0, "hue": [120, 120], "saturation": [1, 1], "value": [1, 1]}))
    r, g, b = out.getpixel((60, 60))  # inside the red box: red turns green
    assert g > 150 and r < 80 and b < 80


def test_colour_ops_run_after_the_geometric_ops():
    # The canvas a rotation exposes is filled grey (114) and then takes the gamma curve with the
    # rest of the image: the reference order. Colour first would leave it 114.
    config = cfg(
        fill=[114, 114, 114], rotate={"prob": 1.0, "degrees": [33, 33]}, gamma={"prob": 1.0, "range": [0.5, 0.5]}
    )
    out, _ = augment(config)
    assert out.getpixel((1, 1)) == (170, 170, 170)  # 255·(114/255)^0.5


# --- bypass, cap, determinism --------------------------------------------------------------

ALL_ON = dict(
    hflip={"prob": 1.0},
    vflip={"prob": 0.5},
    rotate={"prob": 1.0, "degrees": [-30, 30]},
    scale={"prob": 1.0, "range": [0.7, 1.3]},
    crop={"prob": 1.0, "size": [0.5, 0.9]},
    color_jitter={"prob": 1.0},
    gamma={"prob": 1.0},
    hsv={"prob": 1.0},
)


def test_bypass_probability_one_returns_the_input():
    image, record = scene()
    snapshot = copy.deepcopy(record)
    out_image, out_record = run_augment(image, record, cfg(bypass_prob=1.0, **ALL_ON), random.Random(1))
    assert out_image is image and out_record is record and record == snapshot
    changed, _ = run_augment(image, record, cfg(bypass_prob=0.0, **ALL_ON), random.Random(1))
    assert changed.tobytes() != image.tobytes()
    assert record == snapshot, "the input record is never modified"


@pytest.mark.parametrize("seed", range(8))
def test_pixel_cap_and_multiple_of_32(seed):
    cap = 40_000
    config = cfg(max_pixels=cap, **{**ALL_ON, "scale": {"prob": 1.0, "range": [1.5, 2.0]}})
    out, record = augment(config, seed)
    w, h = out.size
    assert w * h <= cap and w % 32 == 0 and h % 32 == 0
    assert (record["width"], record["height"]) == (w, h)
    validate(record, "sample")
    for obj in record["objects"]:
        coords = next(v for k, v in obj.items() if k != "desc")
        assert max(coords[0::2]) <= w and max(coords[1::2]) <= h


def test_same_seed_same_output_other_seed_differs():
    config = cfg(**ALL_ON)
    first, second, other = augment(config, 11), augment(config, 11), augment(config, 12)
    assert first[0].tobytes() == second[0].tobytes() and first[1] == second[1]
    assert first[0].tobytes() != other[0].tobytes()


def test_image_size_must_match_the_record():
    image, record = scene()
    record["width"] = 300
    with pytest.raises(SampleError, match="image is 320x256, record says 300x256"):
        run_augment(image, record, cfg(), random.Random(0))


# --- config ------------------------------------------------------------------------------


def test_load_config_fills_defaults():
    config = load_config({"rotate": {"prob": 0.5}}, CAP)
    assert config["rotate"] == {"prob": 0.5, "degrees": [-10, 10]}
    assert config["crop"]["min_coverage"] == 0.3 and config["max_pixels"] == CAP and config["factor"] == 32
    assert load_config({"max_pixels": 4096}, CAP)["max_pixels"] == 4096


def test_load_config_reports_unknown_keys_and_reversed_ranges():
    with pytest.raises(SchemaError, match=r"rotate\.angle: unknown key"):
        load_config({"rotate": {"angle": 3}}, CAP)
    with pytest.raises(SchemaError, match=r"scale\.range"):
        load_config({"scale": {"range": [1.2, 0.8]}}, CAP)
