"""Conversion of single exports: the happy path and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import EXAMPLE_SUMMARY, example_export, write_sample
from PIL import Image

from vlqc.data.convert import ConvertSettings, convert_sample
from vlqc.data.dataset import convert_dataset
from vlqc.data.desc import parse_desc
from vlqc.errors import VlqcError
from vlqc.jsonl import read_jsonl


def settings_for(root: Path, tmp_path: Path, **kw) -> ConvertSettings:
    return ConvertSettings(root=root, out_dir=tmp_path / "out", **kw)


def convert_one(root, tmp_path, json_path, **kw):
    return convert_sample(json_path, settings_for(root, tmp_path, **kw))


def test_worked_example_converts_to_the_reference_summary(export_root, tmp_path):
    path = write_sample(export_root, "photo")
    result = convert_one(export_root, tmp_path, path)
    assert result.error is None, result.error
    record = result.record
    # 1200x1600 = 1.92 MP is over the 786432 budget: both sides shrink to multiples of 32.
    assert record["width"] % 32 == 0 and record["height"] % 32 == 0
    assert record["width"] * record["height"] <= 786432
    assert record["summary"] == EXAMPLE_SUMMARY
    assert [o["desc"] for o in record["objects"]] == [
        "类别=BBU设备,品牌=华为,可见性=部分,挡风板需求=免装,备注=无法判断品牌",
        "类别=BBU安装螺丝,可见性=完整,符合性=符合",
        "类别=光纤,保护措施=有保护,保护细节=蛇形管,弯曲半径=半径合理",
    ]
    kinds = [next(k for k in o if k != "desc") for o in record["objects"]]
    assert kinds == ["poly", "bbox_2d", "line"]
    written = Image.open(tmp_path / "out" / record["images"][0])
    assert written.size == (record["width"], record["height"])


def test_geometry_is_scaled_into_the_rewritten_image(export_root, tmp_path):
    path = write_sample(export_root, "photo")
    record = convert_one(export_root, tmp_path, path).record
    sx, sy = record["width"] / 1200, record["height"] / 1600
    box = record["objects"][1]["bbox_2d"]
    assert box == pytest.approx([300 * sx, 600 * sy, 360 * sx, 650 * sy], abs=1)
    line = record["objects"][2]["line"]
    assert line[:2] == pytest.approx([620 * sx, 700 * sy], abs=1)


def test_export_size_with_same_aspect_is_rescaled(export_root, tmp_path):
    export = example_export()
    export["info"].update(width=600, height=800)  # annotated on a half-size copy
    for feature in export["markResult"]["features"]:
        coords = feature["geometry"]["coordinates"]
        ring = coords[0] if isinstance(coords[0][0], list) else coords
        for point in ring:
            point[0] /= 2
            point[1] /= 2
    path = write_sample(export_root, "photo", export)
    reference = convert_one(export_root, tmp_path, write_sample(export_root / "ref", "photo")).record
    result = convert_one(export_root, tmp_path, path)
    assert result.flags["rescaled"] == 1
    for got, want in zip(result.record["objects"], reference["objects"]):
        kind = next(k for k in got if k != "desc")
        assert got[kind] == pytest.approx(want[kind], abs=1)


def test_exif_rotated_photo_maps_coordinates_into_the_displayed_frame(export_root, tmp_path):
    # Stored 1600x1200 with orientation 6 (rotate 90° clockwise for display) → 1200x1600 shown.
    export = example_export()
    export["info"].update(width=1600, height=1200)
    export["markResult"]["features"] = [export["markResult"]["features"][1]]
    # A box at raw (100..160, 300..350) ends up, after a 90° clockwise turn, at x=1200-350..1200-300.
    export["markResult"]["features"][0]["geometry"]["coordinates"] = [
        [100, 300],
        [160, 300],
        [160, 350],
        [100, 350],
        [100, 300],
    ]
    path = export_root / "photo.json"
    path.write_text(json.dumps(export, ensure_ascii=False), encoding="utf-8")
    image = Image.new("RGB", (1600, 1200))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(export_root / "photo.jpg", exif=exif)
    result = convert_one(export_root, tmp_path, path)
    record = result.record
    assert result.flags["exif_oriented"] == 1
    assert record["height"] > record["width"]
    sx, sy = record["width"] / 1200, record["height"] / 1600
    assert record["objects"][0]["bbox_2d"] == pytest.approx([850 * sx, 100 * sy, 900 * sx, 160 * sy], abs=1)


def test_datalist_variant(export_root, tmp_path):
    export = {
        "info": {"width": 1200, "height": 1600, "depth": 3},
        "dataList": [
            {
                "coordinates": [[210, 180], [980, 560]],
                "properties": {"contentZh": {"标签": "BBU设备/华为", "如果有特殊情况，请具体描述": "无法判断品牌"}},
            },
            {
                "coordinates": [[360, 650], [300, 600]],
                "properties": {"contentZh": {"标签": "螺丝、光纤插头/BBU安装螺丝"}},
            },
        ],
    }
    record = convert_one(export_root, tmp_path, write_sample(export_root, "photo", export)).record
    assert [o["desc"] for o in record["objects"]] == [
        "类别=BBU设备,属性=华为,备注=无法判断品牌",
        "类别=螺丝、光纤插头,属性=BBU安装螺丝",
    ]
    assert "螺丝、光纤插头" in record["summary"]


# --- bad input: each case has its own reason code --------------------------------------


def write_raw(root: Path, stem: str, data: bytes, image: bool = True) -> Path:
    if image:
        Image.new("RGB", (1200, 1600)).save(root / f"{stem}.jpg")
    path = root / f"{stem}.json"
    path.write_bytes(data)
    return path


def sample_error(root, tmp_path, path):
    result = convert_one(root, tmp_path, path)
    assert result.record is None
    return result.error


def test_malformed_json(export_root, tmp_path):
    error = sample_error(export_root, tmp_path, write_raw(export_root, "bad", b'{"info": {"width": 1,'))
    assert error.code == "malformed_json" and "bad.json" in str(error)


def test_non_utf8_text(export_root, tmp_path):
    data = json.dumps(example_export(), ensure_ascii=False).encode("gbk")
    error = sample_error(export_root, tmp_path, write_raw(export_root, "gbk", data))
    assert error.code == "not_utf8" and "gbk.json" in str(error)


def test_schema_violation_names_the_json_path(export_root, tmp_path):
    export = example_export()
    del export["info"]["width"]
    error = sample_error(export_root, tmp_path, write_sample(export_root, "nowidth", export))
    assert error.code == "schema_violation" and "info:" in error.message and "width" in error.message


def test_missing_image(export_root, tmp_path):
    path = write_raw(export_root, "alone", json.dumps(example_export()).encode(), image=False)
    error = sample_error(export_root, tmp_path, path)
    assert error.code == "missing_image" and "alone" in error.message


def test_image_that_does_not_decode(export_root, tmp_path):
    path = write_raw(export_root, "broken", json.dumps(example_export()).encode(), image=False)
    (export_root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    error = sample_error(export_root, tmp_path, path)
    assert error.code == "image_decode_error" and "broken.jpg" in error.message


def test_export_size_that_cannot_be_a_rescale(export_root, tmp_path):
    export = example_export()
    export["info"].update(width=1600, height=900)
    error = sample_error(export_root, tmp_path, write_sample(export_root, "wide", export))
    assert error.code == "size_mismatch" and "1600x900" in error.message


def test_a_photo_too_long_for_any_resize_is_rejected_not_fatal(export_root, tmp_path):
    export = example_export()
    export["info"].update(width=4020, height=20)
    path = write_sample(export_root, "strip", export, size=(4020, 20))
    error = sample_error(export_root, tmp_path, path)
    assert error.code == "extreme_aspect_ratio" and "4020x20" in error.message


def test_singleton_group_rejects_the_photo(export_root, tmp_path):
    export = {
        "info": {"width": 1200, "height": 1600},
        "markResult": {
            "type": "FeatureCollection",
            "features": [
                {
                    "type": "Feature",
                    "geometry": {"type": "LineString", "coordinates": [[400, 900], [420, 1100], [450, 1300]]},
                    "properties": {
                        "groups": [{"id": 1, "name": "组1"}],
                        "content": {"label": "fiber"},
                        "contentZh": {"尾纤是否标签": "标签", "尾纤是否进行套管保护": "套管保护"},
                    },
                },
                {
                    "type": "Feature",
                    "geometry": {"type": "Quad", "coordinates": [[[100, 100], [300, 100], [300, 300], [100, 300]]]},
                    "properties": {"area": 40000, "groups": [], "content": {"label": "rru"}, "contentZh": {}},
                },
            ],
        },
    }
    error = sample_error(export_root, tmp_path, write_sample(export_root, "rru", export))
    assert error.code == "group_singleton" and "1" in error.message


def test_unknown_category_drops_only_that_object(export_root, tmp_path):
    export = example_export()
    export["markResult"]["features"][1]["properties"]["content"]["label"] = "spaceship"
    result = convert_one(export_root, tmp_path, write_sample(export_root, "odd", export))
    assert result.error is None
    assert [(i, e.code) for i, e in result.dropped] == [(1, "unknown_category")]
    assert "spaceship" in result.dropped[0][1].message
    assert len(result.record["objects"]) == 2


def test_zero_area_polygon_is_dropped_with_its_reason(export_root, tmp_path):
    export = example_export()
    export["markResult"]["features"][0]["geometry"]["coordinates"] = [[[210, 180], [980, 180], [600, 180], [300, 180]]]
    result = convert_one(export_root, tmp_path, write_sample(export_root, "flat", export))
    assert [(i, e.code) for i, e in result.dropped] == [(0, "zero_area")]


def test_all_objects_dropped_is_a_bad_sample(export_root, tmp_path):
    export = example_export()
    for feature in export["markResult"]["features"]:
        feature["properties"]["content"]["label"] = "spaceship"
        feature["properties"]["contentZh"].pop("标签", None)
    error = sample_error(export_root, tmp_path, write_sample(export_root, "none", export))
    assert error.code == "no_valid_objects"


# --- dataset level: fail-fast vs lenient --------------------------------------------------


def test_fail_fast_stops_at_the_first_bad_sample_naming_it(export_root, tmp_path):
    write_sample(export_root, "a_good")
    write_raw(export_root, "b_bad", b"{nope")
    with pytest.raises(VlqcError, match=r"b_bad\.json.*malformed_json"):
        convert_dataset(settings_for(export_root, tmp_path), mode="fail_fast", workers=1)
    assert not (tmp_path / "out" / "all_samples.jsonl").exists()


def test_a_remark_with_commas_is_kept_whole_and_written(export_root, tmp_path):
    # Free text keeps its commas (docs/taxonomy.md): the pieces after the first read back as the remark's.
    export = example_export()
    answers = export["markResult"]["features"][0]["properties"]["contentZh"]
    answers["如果有特殊情况，请具体描述"] = "无法判断品牌,标签被挡住一半"
    write_sample(export_root, "photo", export)
    convert_dataset(settings_for(export_root, tmp_path), mode="fail_fast", workers=1)
    (record,) = read_jsonl(tmp_path / "out" / "all_samples.jsonl", schema="sample")
    desc = record["objects"][0]["desc"]
    assert desc.endswith(",备注=无法判断品牌,标签被挡住一半")
    assert parse_desc(desc)["备注"] == ["无法判断品牌,标签被挡住一半"]


def test_lenient_records_bad_samples_and_keeps_the_rest(export_root, tmp_path):
    write_sample(export_root, "a_good")
    write_raw(export_root, "b_bad", b"{nope")
    odd = example_export()
    odd["markResult"]["features"][1]["properties"]["content"]["label"] = "spaceship"
    write_sample(export_root, "c_odd", odd)
    summary = convert_dataset(settings_for(export_root, tmp_path), mode="lenient", workers=2)
    out = tmp_path / "out"
    assert [r["sample_id"] for r in read_jsonl(out / "all_samples.jsonl", schema="sample")] == ["a_good", "c_odd"]
    assert [(r["source"], r["reason"]) for r in read_jsonl(out / "invalid_samples.jsonl", schema="invalid_sample")] == [
        ("b_bad.json", "malformed_json")
    ]
    assert [(r["source"], r["index"], r["reason"]) for r in read_jsonl(out / "invalid_objects.jsonl")] == [
        ("c_odd.json", 1, "unknown_category")
    ]
    assert summary["invalid_samples"] == {"malformed_json": 1}
    assert summary["samples"] == 2
    vocab = json.loads((out / "label_vocabulary.json").read_text(encoding="utf-8"))
    assert vocab["categories"]["BBU设备"] == 2 and vocab["attributes"]["BBU设备"]["品牌"] == {"华为": 2}


def test_legacy_summary_option(export_root, tmp_path):
    record = convert_one(export_root, tmp_path, write_sample(export_root, "photo"), summary_format="legacy").record
    assert record["summary"] == (
        "BBU设备/需复核,备注:无法判断品牌×1，光纤/有保护措施,弯曲半径合理/蛇形管×1，螺丝、光纤插头/BBU安装螺丝,符合要求×1"
    )
    assert record["objects"][0]["desc"].startswith("类别=BBU设备")


def test_ticket_layout_is_recognised(export_root, tmp_path):
    folder = export_root / "挡风板安装检查" / "审核不通过" / "QC-TEMP-20241111-0015238"
    path = write_sample(folder, "QC-TEMP-20241111-0015238_4276841")
    record = convert_one(export_root, tmp_path, path).record
    assert record["ticket"] == {"mission": "挡风板安装检查", "label": "fail", "group_id": "QC-TEMP-20241111-0015238"}
