"""Copy-paste augmentation: what the patch bank keeps, a golden paste per op (geometry, descs,
summary and the pixels where the patch lands), occlusion of the objects under a patch, the
placement gate, and colour ops running after the paste."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vlqc.data.summary import build_summary
from vlqc.errors import SchemaError
from vlqc.schemas import validate
from vlqc.train.augment import Tally, augment, load_config
from vlqc.train.copy_paste import _occlude, build_bank

OFF = {n: {"prob": 0.0} for n in ("hflip", "vflip", "rotate", "scale", "crop", "color_jitter", "gamma", "hsv")}
SMALL, CLUSTER, LINE = "small_object_zoom_paste", "object_cluster_copy_paste", "line_segment_copy_paste"

DEVICE = "类别=BBU设备,品牌=华为,可见性=完整,挡风板需求=免装"
SCREW = "类别=BBU安装螺丝,可见性=完整,符合性=符合"
LABEL = "类别=标签,文本=A1"
PLUG = "类别=ODF端光纤插头,可见性=完整,符合性=符合"
FIBRE = "类别=光纤,保护措施=有保护,保护细节=蛇形管"
TARGET_DEVICE = "类别=BBU设备,品牌=中兴,可见性=完整,挡风板需求=免装"
TARGET_DEVICE_PARTIAL = "类别=BBU设备,品牌=中兴,可见性=部分,挡风板需求=免装"
WIRE = "类别=电线,捆扎=整齐"


def cfg(**ops) -> dict:
    """Every op off but the copy-paste ones given (any placement allowed unless they say otherwise)."""
    section = {"bypass_prob": 0.0, **copy.deepcopy(OFF)}
    for name, values in ops.items():
        section[name] = {"max_hidden": 1.0, **values} if name in (SMALL, CLUSTER, LINE) else values
    return load_config(section, 1024 * 768)


def record(sid: str, size: tuple[int, int], objects: list[dict], domain: str = "BBU") -> dict:
    out = {
        "sample_id": sid,
        "images": [f"{sid}.png"],
        "width": size[0],
        "height": size[1],
        "domain": domain,
        "objects": objects,
        "summary": build_summary([o["desc"] for o in objects], domain),
        "source": f"{sid}.json",
    }
    validate(out, "sample")
    return out


def source_scene(folder: Path) -> tuple[dict, Path]:
    """128x96: a device with a screw on it, a label and a plug side by side, a fibre."""
    image = Image.new("RGB", (128, 96), (90, 90, 90))
    draw = ImageDraw.Draw(image)
    draw.rectangle([8, 8, 67, 59], fill=(200, 40, 40))
    draw.rectangle([20, 20, 31, 35], fill=(230, 210, 40))
    draw.rectangle([80, 12, 91, 23], fill=(40, 200, 60))
    draw.rectangle([96, 14, 107, 27], fill=(40, 200, 200))
    draw.line([(20, 74), (60, 84), (100, 76)], fill=(40, 60, 230), width=3)
    path = folder / "source.png"
    image.save(path)
    objects = [
        {"bbox_2d": [8, 8, 68, 60], "desc": DEVICE},
        {"bbox_2d": [20, 20, 32, 36], "desc": SCREW},
        {"bbox_2d": [80, 12, 92, 24], "desc": LABEL},
        {"bbox_2d": [96, 14, 108, 28], "desc": PLUG},
        {"line": [20, 74, 60, 84, 100, 76], "desc": FIBRE},
    ]
    return record("source", (128, 96), objects), path


def target_scene() -> tuple[Image.Image, dict]:
    """160x128: a device and a wire across the bottom."""
    image = Image.new("RGB", (160, 128), (60, 60, 60))
    draw = ImageDraw.Draw(image)
    draw.rectangle([16, 16, 111, 79], fill=(220, 30, 30))
    draw.line([(10, 100), (150, 110)], fill=(240, 240, 240), width=3)
    objects = [{"bbox_2d": [16, 16, 112, 80], "desc": TARGET_DEVICE}, {"line": [10, 100, 150, 110], "desc": WIRE}]
    return image, record("target", (160, 128), objects)


@pytest.fixture
def source(tmp_path) -> tuple[dict, Path]:
    return source_scene(tmp_path)


def pastes(config: dict, source: tuple[dict, Path], seed: int) -> tuple[Image.Image, dict, Tally]:
    bank = build_bank([source], config)
    image, target = target_scene()
    tally = Tally()
    out_image, out = augment(image, target, config, random.Random(seed), bank=bank, tally=tally)
    validate(out, "sample")
    assert out["summary"] == build_summary([o["desc"] for o in out["objects"]], "BBU")
    return out_image, out, tally


def assert_patch_landed(out: Image.Image, source_path: Path, box: tuple, rect: tuple) -> None:
    """The pixels of `rect` are the source's `box`, resized to it; every other pixel is the target's."""
    with Image.open(source_path) as image:
        patch = image.convert("RGB").crop(box)
    size = (rect[2] - rect[0], rect[3] - rect[1])
    if patch.size != size:
        patch = patch.resize(size, Image.Resampling.BICUBIC)
    assert out.crop(rect).tobytes() == patch.tobytes()
    changed = np.any(np.asarray(out) != np.asarray(target_scene()[0]), axis=2)
    ys, xs = np.nonzero(changed)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == rect


# --- the bank ------------------------------------------------------------------------------------


def test_bank_holds_complete_objects_alone(source):
    config = cfg(**{op: {"prob": 1.0} for op in (SMALL, CLUSTER, LINE)})
    bank = build_bank([source], config)

    def pool(op):
        return [(p.box, [o.desc for o in p.objects]) for p in bank.pool(op, "BBU")]

    # The screw sits on the device, which holds its patch whole: banked. The device is not small (60 px).
    assert pool(SMALL) == [((16, 16, 36, 40), [SCREW]), ((76, 8, 96, 28), [LABEL]), ((92, 10, 112, 32), [PLUG])]
    # Clusters: the device with its screw, the label with the plug; no seed is alone twice.
    assert pool(CLUSTER) == [((4, 4, 72, 64), [DEVICE, SCREW]), ((76, 8, 112, 32), [LABEL, PLUG])]
    assert pool(LINE) == [((14, 68, 106, 90), [FIBRE])]
    # Patch geometry is relative to the patch's corner.
    assert bank.pool(LINE, "BBU")[0].objects[0].points == ((6, 6), (46, 16), (86, 8))
    assert bank.pool(SMALL, "RRU") == []
    assert bank.counts() == {SMALL: {"BBU": 3}, CLUSTER: {"BBU": 2}, LINE: {"BBU": 1}}


def test_bank_leaves_out_partial_cut_and_border_objects(source, tmp_path):
    rec, path = source
    objects = copy.deepcopy(rec["objects"])
    objects[2]["desc"] = "类别=标签,可读性=不可读"
    objects[3]["desc"] = PLUG.replace("可见性=完整", "可见性=部分")  # shown in part: not banked
    objects.append({"bbox_2d": [0, 40, 10, 50], "desc": SCREW})  # touches the border
    objects.append({"bbox_2d": [40, 74, 52, 90], "desc": SCREW})  # the fibre crosses it
    changed = record("changed", (128, 96), objects)
    config = cfg(**{SMALL: {"prob": 1.0}, LINE: {"prob": 1.0}})
    bank = build_bank([(changed, path)], config)
    # The crossed screw's patch would show a piece of the fibre, and the fibre's a piece of the screw.
    assert [[o.desc for o in p.objects] for p in bank.pool(SMALL, "BBU")] == [[SCREW], ["类别=标签,可读性=不可读"]]
    assert bank.pool(LINE, "BBU") == []
    # Ops that are off get no patches; a legacy summary gives none at all.
    assert bank.pool(CLUSTER, "BBU") == []
    legacy = {**changed, "summary": "BBU设备×1"}
    assert build_bank([(legacy, path)], config).counts()[SMALL] == {}


def test_patches_stay_in_their_domain(source, tmp_path):
    rec, path = source
    rru = record("rru", (128, 96), [{"bbox_2d": [20, 20, 32, 36], "desc": "类别=紧固件,安装状态=合格"}], "RRU")
    config = cfg(**{SMALL: {"prob": 1.0}})
    bank = build_bank([(rru, path)], config)
    assert bank.counts()[SMALL] == {"RRU": 1}
    image, target = target_scene()
    tally = Tally()
    out_image, out = augment(image, target, config, random.Random(0), bank=bank, tally=tally)
    assert out == target and out_image.tobytes() == image.tobytes()
    assert tally.paste_skipped["no_patch"] == 1 and tally.ops[SMALL] == 0


# --- a golden paste per op -----------------------------------------------------------------------


def test_small_object_zoom_paste(source):
    out_image, out, tally = pastes(cfg(**{SMALL: {"prob": 1.0, "scale": [2.0, 2.0]}}), source, seed=0)
    assert out["objects"] == [
        # The patch covers a band of the device's bottom edge: its box stays, and it is partial.
        {"bbox_2d": [16, 16, 112, 80], "desc": TARGET_DEVICE_PARTIAL},
        # The label's patch (76, 8)-(96, 28) twice as large at (45, 74): the label at 45 + 2·4.
        {"bbox_2d": [53, 82, 77, 106], "desc": LABEL},
        # The wire runs under the patch (x 45..85): its longer visible run is kept.
        {"line": [85, 105, 150, 110], "desc": WIRE},
    ]
    assert_patch_landed(out_image, source[1], (76, 8, 96, 28), (45, 74, 85, 114))
    assert tally.ops[SMALL] == 1
    assert dict(tally.objects) == {"in": 2, "out": 3, "cut": 2, "clipped": 2, "pasted": 1, "marked_partial": 1}
    # Hidden: 40x6 px of the device's 96x64, and the wire from x 45 to 85 of its 10..150.
    assert tally.coverage_sum == pytest.approx((1 - 240 / 6144) + (1 - 40 / 140))


def test_object_cluster_copy_paste(source):
    out_image, out, tally = pastes(cfg(**{CLUSTER: {"prob": 1.0}}), source, seed=3)
    assert out["objects"] == [
        {"bbox_2d": [16, 16, 112, 80], "desc": TARGET_DEVICE},  # untouched: still whole
        # The label+plug patch (76, 8)-(112, 32), 36x24, drawn at 37x24 (scale 1.028) at (24, 91).
        {"bbox_2d": [28, 95, 40, 107], "desc": LABEL},
        {"bbox_2d": [45, 97, 57, 111], "desc": PLUG},
        {"line": [61, 104, 150, 110], "desc": WIRE},
    ]
    assert_patch_landed(out_image, source[1], (76, 8, 112, 32), (24, 91, 61, 115))
    assert tally.objects["pasted"] == 2 and tally.objects["marked_partial"] == 0 and tally.objects["cut"] == 1


def test_line_segment_copy_paste(source):
    out_image, out, tally = pastes(cfg(**{LINE: {"prob": 1.0}}), source, seed=0)
    assert out["objects"] == [
        # The fibre's strip (14, 68)-(106, 90) at (36, 17), scale 1: the fibre moved by (22, -51).
        {"line": [42, 23, 82, 33, 122, 25], "desc": FIBRE},
        {"bbox_2d": [16, 16, 112, 80], "desc": TARGET_DEVICE_PARTIAL},
        {"line": [10, 100, 150, 110], "desc": WIRE},
    ]
    assert_patch_landed(out_image, source[1], (14, 68, 106, 90), (36, 17, 128, 39))
    assert tally.ops[LINE] == 1 and tally.objects["pasted"] == 1


def test_paste_is_deterministic_and_leaves_the_inputs_alone(source):
    config = cfg(**{op: {"prob": 1.0, "pastes": 2} for op in (SMALL, CLUSTER, LINE)})
    bank = build_bank([source], config)
    image, target = target_scene()
    snapshot = copy.deepcopy(target)
    runs = [augment(image, target, config, random.Random(seed), bank=bank) for seed in (5, 5, 6)]
    assert runs[0][1] == runs[1][1] and runs[0][0].tobytes() == runs[1][0].tobytes()
    assert runs[0][1] != runs[2][1]
    assert target == snapshot and image.tobytes() == target_scene()[0].tobytes()


# --- occlusion and placement ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj, rect, expected, fraction",
    [
        # A side covered: the box shrinks to what shows.
        ({"bbox_2d": [40, 40, 100, 80], "desc": SCREW}, (80, 30, 120, 90), [40, 40, 80, 80], 40 / 60),
        # A hole in the middle: the box stays, partial.
        ({"bbox_2d": [40, 40, 100, 80], "desc": SCREW}, (60, 50, 70, 60), [40, 40, 100, 80], 1 - 100 / 2400),
        # A corner: what shows spans the whole box.
        ({"bbox_2d": [40, 40, 100, 80], "desc": SCREW}, (90, 70, 120, 90), [40, 40, 100, 80], 1 - 100 / 2400),
        # A diamond's right half covered: the triangle left has 3 vertices, so it becomes its box.
        (
            {"poly": [40, 20, 60, 40, 40, 60, 20, 40], "desc": SCREW},
            (40, 0, 100, 100),
            {"bbox_2d": [20, 20, 40, 60]},
            0.5,
        ),
        # A square polygon's right half covered: still a polygon of 4 vertices.
        (
            {"poly": [20, 20, 60, 20, 60, 60, 20, 60], "desc": SCREW},
            (40, 0, 100, 100),
            {"poly": [20, 20, 40, 20, 40, 60, 20, 60]},
            0.5,
        ),
        # A line with its middle covered keeps its longer run.
        ({"line": [10, 50, 110, 50], "desc": WIRE}, (40, 40, 60, 60), {"line": [60, 50, 110, 50]}, 0.8),
    ],
)
def test_occluded_objects_are_clipped_and_marked(obj, rect, expected, fraction):
    tally = Tally()
    [kept] = _occlude([obj], rect, 160, 128, 0.3, tally)
    geometry = expected if isinstance(expected, dict) else {"bbox_2d": expected}
    assert {k: v for k, v in kept.items() if k != "desc"} == geometry
    assert kept["desc"] == (obj["desc"].replace("完整", "部分") if "可见性" in obj["desc"] else obj["desc"])
    assert tally.coverage_sum == pytest.approx(fraction)
    assert dict(tally.objects) == {"cut": 1, "clipped": 1, "marked_partial": int("可见性" in obj["desc"])}


def test_mostly_hidden_objects_are_dropped_and_untouched_ones_kept_as_they_are():
    screw = {"bbox_2d": [40, 40, 100, 80], "desc": SCREW}
    apart = {"bbox_2d": [0, 0, 10, 10], "desc": SCREW}
    tally = Tally()
    # 50 of 60 px of width hidden: 17% shows, below min_coverage 0.3.
    assert _occlude([screw, apart], (50, 30, 120, 90), 160, 128, 0.3, tally) == [apart]
    assert dict(tally.objects) == {"cut": 1, "dropped": 1}
    assert tally.as_dict()["mean_coverage"] == pytest.approx(10 / 60, abs=1e-6)
    assert _occlude([screw], (50, 30, 120, 90), 160, 128, 0.1, Tally())[0]["bbox_2d"] == [40, 40, 50, 80]


def test_no_placement_within_max_hidden_pastes_nothing(source):
    image = Image.new("RGB", (160, 128), (60, 60, 60))
    full = record("full", (160, 128), [{"bbox_2d": [1, 1, 159, 127], "desc": TARGET_DEVICE}])
    config = cfg(**{SMALL: {"prob": 1.0, "max_hidden": 0.01, "max_attempts": 3}})
    tally = Tally()
    out_image, out = augment(image, full, config, random.Random(0), bank=build_bank([source], config), tally=tally)
    assert out == full and out_image.tobytes() == image.tobytes()
    assert tally.paste_skipped["no_room"] == 1 and tally.ops[SMALL] == 0


def test_records_that_cannot_take_a_paste_are_skipped_and_counted(source):
    image, target = target_scene()
    config = cfg(**{SMALL: {"prob": 1.0}})
    bank = build_bank([source], config)
    tally = Tally()
    legacy = {**target, "summary": "BBU设备×1，电线×1"}
    irrelevant = record("empty", (160, 128), [])
    for sample in (legacy, irrelevant):
        assert augment(image, sample, config, random.Random(0), bank=bank, tally=tally)[1] == sample
    assert augment(image, target, config, random.Random(0), tally=tally)[1] == target  # no bank
    assert dict(tally.paste_skipped) == {"legacy_summary": 1, "irrelevant": 1, "no_patch": 1}
    assert tally.ops[SMALL] == 0


def test_colour_ops_run_after_the_paste(source):
    gamma = {"prob": 1.0, "range": [0.5, 0.5]}
    plain, _, _ = pastes(cfg(**{SMALL: {"prob": 1.0, "scale": [2.0, 2.0]}}), source, seed=0)
    out, record_out, _ = pastes(cfg(**{SMALL: {"prob": 1.0, "scale": [2.0, 2.0]}, "gamma": gamma}), source, seed=0)
    assert record_out["objects"][1] == {"bbox_2d": [53, 82, 77, 106], "desc": LABEL}
    # The pasted patch took the gamma curve like every other pixel.
    curve = [round(255 * (v / 255) ** 0.5) for v in range(256)] * 3
    assert out.tobytes() == plain.point(curve).tobytes()


def test_config_checks_cluster_and_line_bounds():
    with pytest.raises(SchemaError, match="object_cluster_copy_paste.min_objects/max_objects"):
        load_config({CLUSTER: {"min_objects": 5, "max_objects": 3}}, 1024 * 768)
    with pytest.raises(SchemaError, match=r"line_segment_copy_paste\.scale"):
        load_config({LINE: {"scale": [1.2, 0.9]}}, 1024 * 768)
    defaults = load_config({}, 1024 * 768)
    assert all(defaults[op]["prob"] == 0.0 for op in (SMALL, CLUSTER, LINE))
    assert defaults["occlusion"] == {"min_coverage": 0.3}
