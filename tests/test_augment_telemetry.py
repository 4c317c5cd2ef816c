"""Augmentation telemetry of the SFT data job: augment_telemetry.json agrees with the rows written."""

from __future__ import annotations

from pathlib import Path

from conftest import REPO
from PIL import Image, ImageDraw

from vlqc.data.summary import build_summary
from vlqc.jsonl import read_json, read_jsonl, write_jsonl
from vlqc.missions import load_missions
from vlqc.train.augment import load_config
from vlqc.train.sft_data import TELEMETRY, DataConfig, write_dataset

MISSIONS = load_missions(REPO / "config" / "missions.yaml")
SCREW = "类别=BBU安装螺丝,可见性=完整,符合性=符合"
DEVICE = "类别=BBU设备,品牌=华为,可见性=完整,挡风板需求=免装"
FIBRE = "类别=光纤,保护措施=有保护,保护细节=蛇形管"
LABEL = "类别=标签,文本=A1"


def canonical(root: Path, count: int = 6) -> Path:
    """`count` 128x96 photos, each a device with a screw, a label beside it and a fibre."""
    records = []
    for n in range(count):
        dx = 4 * n
        objects = [
            {"bbox_2d": [8 + dx, 8, 60 + dx, 56], "desc": DEVICE},
            {"bbox_2d": [20 + dx, 20, 30 + dx, 32], "desc": SCREW},
            {"bbox_2d": [70 + dx, 12, 82 + dx, 24], "desc": LABEL},
            {"line": [10, 70, 60, 84, 110, 74], "desc": FIBRE},
        ]
        image = Image.new("RGB", (128, 96), (80 + 10 * n, 80, 80))
        draw = ImageDraw.Draw(image)
        for obj in objects[:3]:
            x1, y1, x2, y2 = obj["bbox_2d"]
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=(200, 40 * n % 255, 40))
        draw.line([(10, 70), (60, 84), (110, 74)], fill=(40, 60, 230), width=3)
        name = f"images/p{n}.png"
        (root / "images").mkdir(parents=True, exist_ok=True)
        image.save(root / name)
        records.append(
            {
                "sample_id": f"p{n}",
                "images": [name],
                "width": 128,
                "height": 96,
                "domain": "BBU",
                "objects": objects,
                "summary": build_summary([o["desc"] for o in objects], "BBU"),
                "source": f"p{n}.json",
            }
        )
    path = root / "train.jsonl"
    write_jsonl(path, records, schema="sample")
    return path


def dense_config(augmentation: dict | None) -> DataConfig:
    section = None if augmentation is None else load_config(augmentation, DataConfig.max_pixels)
    return DataConfig(epochs=2, mode_ratios={"dense": 1.0}, augmentation=section)


def test_telemetry_counts_agree_with_the_rows(tmp_path):
    train = canonical(tmp_path / "canonical")
    augmentation = {
        "bypass_prob": 0.3,
        "crop": {"prob": 0.5, "size": [0.5, 0.8]},
        "small_object_zoom_paste": {"prob": 0.8},
        "object_cluster_copy_paste": {"prob": 0.8, "max_size": 128},
        "line_segment_copy_paste": {"prob": 0.8},
    }
    out = tmp_path / "data"
    stats = write_dataset([train], [], dense_config(augmentation), out, MISSIONS)
    telemetry = read_json(out / TELEMETRY, schema="augment_telemetry")
    assert telemetry["enabled"] and [e["epoch"] for e in telemetry["epochs"]] == [0, 1]
    # Every photo's screw and label are small and alone (the device holds the screw whole). Its
    # clusters: the device with its screw, and all four (the device reaches the label and the fibre);
    # the device with the label alone, or with the fibre, would cut the screw out. The fibre is banked.
    assert telemetry["bank"] == {
        "small_object_zoom_paste": {"BBU": 12},
        "object_cluster_copy_paste": {"BBU": 12},
        "line_segment_copy_paste": {"BBU": 6},
    }
    rows = list(read_jsonl(out / "train.jsonl"))
    source = {r["sample_id"]: len(r["objects"]) for r in read_jsonl(train)}
    for entry in telemetry["epochs"]:
        epoch = [r for r in rows if r["meta"]["epoch"] == entry["epoch"]]
        augmented = [r for r in epoch if r["images"][0].startswith(f"images/epoch_{entry['epoch']}/")]
        objects = entry["objects"]
        assert entry["samples"] == len(epoch) == 6
        assert entry["bypassed"] == len(epoch) - len(augmented)
        assert objects["in"] == sum(source[r["meta"]["source"]] for r in augmented)
        # One desc per object in each dense answer.
        assert objects["out"] == sum(r["messages"][2]["content"].count('"desc"') for r in augmented)
        assert objects["out"] == objects["in"] - objects["dropped"] + objects["pasted"]
        assert objects["clipped"] <= objects["cut"] <= objects["clipped"] + objects["dropped"]
        assert sum(entry["ops"][op] for op in ("hflip", "vflip")) == 0
    # The draws of this seed exercise the parts: bypass, crop, pastes, objects cut and marked partial.
    totals = {key: sum(e["objects"][key] for e in telemetry["epochs"]) for key in ("pasted", "cut", "marked_partial")}
    assert all(totals.values()), totals
    assert sum(e["bypassed"] for e in telemetry["epochs"]) > 0
    assert sum(e["ops"]["crop"] for e in telemetry["epochs"]) > 0
    assert all(0 < e["mean_coverage"] < 1 for e in telemetry["epochs"] if e["objects"]["cut"])
    assert stats["augmentation"]["pasted"] == totals["pasted"]


def test_telemetry_without_augmentation_says_so(tmp_path):
    train = canonical(tmp_path / "canonical", count=2)
    write_dataset([train], [], dense_config(None), tmp_path / "data", MISSIONS)
    telemetry = read_json(tmp_path / "data" / TELEMETRY, schema="augment_telemetry")
    assert telemetry == {
        "enabled": False,
        "bank": {"small_object_zoom_paste": {}, "object_cluster_copy_paste": {}, "line_segment_copy_paste": {}},
        "epochs": [],
    }
