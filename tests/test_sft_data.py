"""SFT dataset builder: rows per mode, mode mix, tickets and verdict answers, pixel cap and
resize_to_cap, augmentation determinism, the row schema, the config section, the CLI, and
ms-swift's qwen3_vl template encoding one row of each mode."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image, ImageDraw

from vlqc.data.summary import build_summary
from vlqc.errors import SchemaError, VlqcError
from vlqc.inference.prompts import VERDICT_SYSTEM, hf_messages
from vlqc.jsonl import read_jsonl, write_jsonl
from vlqc.missions import load_missions, mission_rules
from vlqc.schemas import validate
from vlqc.train.augment import load_config as load_augmentation
from vlqc.train.config import load_train_config
from vlqc.train.sft_data import (
    DEFAULT_RATIOS,
    MODES,
    DataConfig,
    PixelCapError,
    build_epoch,
    choose_mode,
    data_config,
    group_tickets,
    prepare_image,
    recombined_verdicts,
    swift_env,
    verdict_reasons,
    write_dataset,
)

sys.path.insert(0, str(REPO / "scripts"))
import sft_dataset  # noqa: E402  (the CLI under scripts/)

DEFINED = load_missions(REPO / "config" / "missions.yaml")
RULES = mission_rules(DEFINED)
MISSIONS = {  # two shipped missions, with short focus texts that the prompt tests look for
    "挡风板安装检查": {**DEFINED["挡风板安装检查"], "focus": "须看到BBU设备。"},
    "BBU安装方式检查（正装）": {**DEFINED["BBU安装方式检查（正装）"], "focus": "须有BBU安装螺丝。"},
}
BBU = "类别=BBU设备,品牌=华为,可见性=完整,挡风板需求=免装"
SHIELD_BAD = "类别=挡风板,品牌=华为,可见性=完整,安装方向=方向错误"
SCREW_OK = "类别=BBU安装螺丝,可见性=完整,符合性=符合"
W, H = 96, 64  # multiples of 32, 6144 pixels


def _record(stem: str, objects: list[dict], ticket: dict | None, size=(W, H)) -> dict:
    folder = f"{ticket['mission']}/{ticket['group_id']}" if ticket else "misc"
    record = {
        "sample_id": f"{folder}/{stem}",
        "images": [f"images/{folder}/{stem}.jpg"],
        "width": size[0],
        "height": size[1],
        "domain": "BBU",
        "objects": objects,
        "summary": build_summary([o["desc"] for o in objects], "BBU"),
        "source": f"{folder}/{stem}.json",
    }
    if ticket:
        record["ticket"] = ticket
    return record


def write_canonical(root: Path, records: list[dict], name: str = "train.jsonl") -> Path:
    """Draw each record's objects on its image and write the canonical JSONL."""
    for n, record in enumerate(records):
        image = Image.new("RGB", (record["width"], record["height"]), (40 + 20 * n, 60, 80))
        draw = ImageDraw.Draw(image)
        for obj in record["objects"]:
            if "bbox_2d" in obj:
                x1, y1, x2, y2 = obj["bbox_2d"]
                draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=(220, 200, 30))
        path = root / record["images"][0]
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=95)
    path = root / name
    write_jsonl(path, records, schema="sample")
    return path


WIND_FAIL = {"mission": "挡风板安装检查", "label": "fail", "group_id": "QC-A"}
INSTALL_PASS = {"mission": "BBU安装方式检查（正装）", "label": "pass", "group_id": "QC-B"}


def fixture_records() -> list[dict]:
    """Ticket QC-A in file order _10, _1, _2 (photo order _1, _2, _10), ticket QC-B, and a record without ticket."""
    return [
        _record("QC-A_10", [{"bbox_2d": [10, 10, 50, 40], "desc": SHIELD_BAD}], WIND_FAIL),
        _record("QC-A_1", [{"bbox_2d": [8, 8, 88, 56], "desc": BBU}], WIND_FAIL),
        _record("QC-A_2", [], WIND_FAIL),
        _record(
            "QC-B_1",
            [{"bbox_2d": [0, 0, 48, 32], "desc": BBU}, {"bbox_2d": [48, 32, 96, 64], "desc": SCREW_OK}],
            INSTALL_PASS,
        ),
        _record("loose", [{"bbox_2d": [16, 16, 32, 32], "desc": SCREW_OK}], None),
    ]


@pytest.fixture
def dataset(tmp_path) -> tuple[list[dict], Path]:
    records = fixture_records()
    return records, write_canonical(tmp_path / "canonical", records)


def config(augmentation: dict | None = None, **settings) -> DataConfig:
    """A DataConfig as `data_config` makes it: the augmentation section resolved, capped at max_pixels."""
    if augmentation is not None:
        augmentation = load_augmentation(augmentation, settings.get("max_pixels", DataConfig.max_pixels))
    return DataConfig(augmentation=augmentation, **settings)


def only(mode: str, **settings) -> DataConfig:
    return config(**{"mode_ratios": {mode: 1}, **settings})


# A quarter turn (the canvas becomes 64x96; scale and crop, on by default, are off) and a random
# colour jitter on every sample.
AUGMENT = {
    "bypass_prob": 0.0,
    "rotate": {"prob": 1.0, "degrees": [90, 90]},
    "scale": {"prob": 0.0},
    "crop": {"prob": 0.0},
    "color_jitter": {"prob": 1.0},
}


# --- rows of each mode --------------------------------------------------------------------------------


def test_dense_rows(dataset, tmp_path):
    records, source = dataset
    rows = build_epoch(records, 0, only("dense"), tmp_path / "out", MISSIONS, source=source)
    assert [r["meta"]["mode"] for r in rows] == ["dense"] * 5
    row = rows[3]
    assert row["images"] == ["images/source/canonical/train/BBU安装方式检查（正装）/QC-B/QC-B_1.jpg"]
    assert row["messages"][1] == {"role": "user", "content": "<image>检测图中对象。"}
    assert row["messages"][2]["content"] == (
        "<DOMAIN=BBU>, <TASK=DETECTION>\n"
        f'{{"object_1": {{"bbox_2d": [0, 0, 500, 500], "desc": "{BBU}"}}, '
        f'"object_2": {{"bbox_2d": [500, 500, 1000, 1000], "desc": "{SCREW_OK}"}}}}'
    )
    assert row["meta"] == {
        "mode": "dense",
        "epoch": 0,
        "split": "canonical/train",
        "index": 3,
        "source": "BBU安装方式检查（正装）/QC-B/QC-B_1",
    }
    linked = tmp_path / "out" / row["images"][0]
    assert linked.read_bytes() == (source.parent / records[3]["images"][0]).read_bytes()


def test_summary_rows_with_and_without_mission(dataset, tmp_path):
    records, source = dataset
    rows = build_epoch(records, 0, only("summary", no_mission_prob=0.0), tmp_path / "out", MISSIONS, source=source)
    system, user, answer = (m["content"] for m in rows[1]["messages"])
    assert system.startswith("你是通信安装质检助手。统计图中对象")
    assert user == "<image>任务: 挡风板安装检查\n重点: 须看到BBU设备。"
    assert answer == "<DOMAIN=BBU>, <TASK=SUMMARY>\n" + records[1]["summary"]
    assert rows[2]["messages"][2]["content"] == "无关图片"
    assert rows[4]["messages"][1]["content"] == "<image>输出摘要。"  # no ticket, no mission
    rows = build_epoch(records, 0, only("summary", no_mission_prob=1.0), tmp_path / "out", MISSIONS, source=source)
    assert {r["messages"][1]["content"] for r in rows} == {"<image>输出摘要。"}


def test_verdict_rows_use_the_ticket_summaries_in_photo_order(dataset, tmp_path):
    records, source = dataset
    rows = build_epoch(
        records, 0, only("verdict", mode_ratios={"verdict": 1, "summary": 1e-9}), tmp_path, MISSIONS, source=source
    )
    verdicts = [r for r in rows if r["meta"]["mode"] == "verdict"]
    assert len(verdicts) == 4 and rows[4]["meta"]["mode"] == "summary"  # the ticketless record cannot be one
    row = verdicts[0]
    assert "images" not in row
    assert row["meta"] == {
        "mode": "verdict",
        "epoch": 0,
        "split": "canonical/train",
        "index": 0,
        "source": "挡风板安装检查/QC-A::fail",
    }
    assert row["messages"][0]["content"] == VERDICT_SYSTEM
    assert row["messages"][1]["content"] == (
        "任务: 挡风板安装检查\n重点: 须看到BBU设备。\n"
        "图片数: 3; 对象数: Image1=1, Image2=0, Image3=1\n"
        f"Image1: {records[1]['summary']}\nImage2: 无关图片\nImage3: {records[0]['summary']}"
    )
    assert row["messages"][2]["content"] == (
        "Verdict: 不通过\nReason: Image3: 挡风板安装方向=方向错误; 总结: 存在与任务相关的问题"
    )
    assert [r["messages"] for r in verdicts[:3]] == [row["messages"]] * 3  # one ticket, three anchors
    assert verdicts[3]["messages"][2]["content"] == (
        "Verdict: 通过\nReason: BBU设备见Image1; BBU安装螺丝见Image1; 总结: 任务要求均满足"
    )


def test_verdict_rows_take_guidance(dataset, tmp_path):
    records, source = dataset
    guidance = {"挡风板安装检查": {"G0": "看BBU。", "G10": "十", "G2": "二"}}
    cfg = only("verdict", mode_ratios={"verdict": 1, "summary": 1e-9})
    rows = build_epoch(records, 0, cfg, tmp_path, MISSIONS, source=source, guidance=guidance)
    assert "重点: 看BBU。\n可学习规则:\n1. 二\n2. 十\n" in rows[0]["messages"][1]["content"]
    assert "重点: 须有BBU安装螺丝。" in rows[3]["messages"][1]["content"]  # no guidance for that mission


def test_a_record_without_ticket_needs_an_image_mode(dataset, tmp_path):
    records, source = dataset
    with pytest.raises(VlqcError, match=r"train\.jsonl: record 4: no mode with a positive ratio"):
        build_epoch(records, 0, only("verdict"), tmp_path, MISSIONS, source=source)


def test_tickets_group_by_mission_label_and_group(dataset):
    records, _ = dataset
    records.append(_record("QC-A_1", [], {**WIND_FAIL, "label": "pass"}))
    tickets = group_tickets(records)
    assert tickets[("挡风板安装检查", "fail", "QC-A")].indices == (1, 2, 0)
    assert tickets[("挡风板安装检查", "pass", "QC-A")].indices == (5,)
    assert len(tickets) == 3


# --- verdict answers from the mission rule -----------------------------------------------------------------


def summary(*descs: str) -> str:
    return build_summary(list(descs), "BBU")


@pytest.mark.parametrize(
    ("mission", "summaries", "problems"),
    [
        ("BBU安装方式检查（正装）", [summary(BBU)], ["缺少BBU安装螺丝"]),
        (
            "BBU安装方式检查（正装）",
            [summary(BBU), summary("类别=BBU安装螺丝,可见性=完整,符合性=不符合,问题=未拧紧|生锈")],
            ["Image2: BBU安装螺丝符合性=不符合,问题=未拧紧,问题=生锈"],
        ),
        ("挡风板安装检查", ["无关图片", summary(SHIELD_BAD)], ["Image2: 挡风板安装方向=方向错误", "缺少BBU设备"]),
        (
            "挡风板安装检查",
            [summary("类别=BBU设备,品牌=华为,可见性=完整,挡风板需求=空间充足需安装,挡风板符合性=未按要求配备")],
            ["Image1: BBU设备挡风板符合性=未按要求配备"],
        ),
        (
            "BBU接地线检查",
            [summary("类别=机柜处接地螺丝,可见性=完整,符合性=符合", "类别=电线,捆扎=散乱")],
            ["Image1: 电线捆扎=散乱", "缺少地排处接地螺丝"],
        ),
        (
            "BBU线缆布放要求",
            [
                summary(
                    "类别=BBU端光纤插头,可见性=完整,符合性=符合",
                    "类别=ODF端光纤插头,可见性=完整,符合性=符合",
                    "类别=光纤,保护措施=有保护,保护细节=铠装,弯曲半径=半径不合理<4cm或成环",
                )
            ],
            ["Image1: 光纤弯曲半径=半径不合理<4cm或成环"],
        ),
    ],
)
def test_mission_rules_find_the_problems(mission, summaries, problems):
    outcome = RULES[mission].evaluate_summaries(summaries)
    assert list(outcome.problems) == problems
    assert verdict_reasons("fail", outcome) == (problems, False)
    assert verdict_reasons("pass", outcome) == ([], True)  # the rule disagrees: generic Reason


def test_mission_rules_cite_where_required_objects_were_seen():
    outcome = RULES["BBU安装方式检查（正装）"].evaluate_summaries([summary(BBU), "无关图片", summary(BBU, SCREW_OK)])
    assert outcome.problems == ()
    assert verdict_reasons("pass", outcome) == (["BBU设备见Image1,Image3", "BBU安装螺丝见Image3"], False)
    # Distractors do not fail a mission: a wrong shield direction is no install-mission problem.
    assert RULES["BBU安装方式检查（正装）"].evaluate_summaries([summary(BBU, SCREW_OK, SHIELD_BAD)]).verdict == "pass"


LEGACY_SCREW = summary("类别=螺丝、光纤插头,属性=BBU安装螺丝,备注=显示完整/符合要求", "类别=BBU设备,属性=华为")


def test_legacy_datalist_screws_count_as_present_but_their_conformity_is_unknown():
    outcome = RULES["BBU安装方式检查（正装）"].evaluate_summaries([LEGACY_SCREW])
    assert outcome.seen == ("BBU设备见Image1", "BBU安装螺丝见Image1") and outcome.problems == ()
    assert outcome.verdict is None  # whether the screw conforms sits in free text
    # A passing ticket still cites where its evidence was seen; a failing one has nothing to cite.
    assert verdict_reasons("pass", outcome) == (["BBU设备见Image1", "BBU安装螺丝见Image1"], False)
    assert verdict_reasons("fail", outcome) == ([], True)


def test_tickets_the_rule_cannot_read_fall_back_to_the_generic_reason():
    outcome = RULES["挡风板安装检查"].evaluate_summaries(["BBU设备/华为×1"])
    assert not outcome.decidable and outcome.missing == ("BBU设备",)
    assert verdict_reasons("fail", outcome) == verdict_reasons("pass", outcome) == ([], True)


# --- mode mix -------------------------------------------------------------------------------------------


def modes(seed: int, epoch: int, ratios=DEFAULT_RATIOS, n: int = 300, has_ticket: bool = True) -> list[str]:
    return [choose_mode(seed, epoch, i, ratios, has_ticket) for i in range(n)]


def _install_ticket(group: str, screws: list[str]) -> list[dict]:
    """An install ticket of one BBU photo and one photo per screw desc; labelled by its rule."""
    label = "fail" if any("不符合" in s for s in screws) else "pass"
    ticket = {"mission": "BBU安装方式检查（正装）", "label": label, "group_id": group}
    photos = [_record(f"{group}_1", [{"bbox_2d": [0, 0, 48, 32], "desc": BBU}], ticket)]
    return photos + [
        _record(f"{group}_{n}", [{"bbox_2d": [0, 0, 32, 32], "desc": s}], ticket) for n, s in enumerate(screws, 2)
    ]


SCREW_BAD = "类别=BBU安装螺丝,可见性=完整,符合性=不符合,问题=生锈"


def test_recombined_verdicts_are_labelled_by_the_rule_over_their_summaries():
    records = [
        *_install_ticket("QC-P", [SCREW_OK]),
        *_install_ticket("QC-F", [SCREW_BAD, SCREW_OK]),
        *_install_ticket("QC-Q", [SCREW_OK, SCREW_OK]),
        *fixture_records()[:3],  # a wind-shield ticket: its rule needs a BBU photo, which QC-A has
    ]
    cfg = config(recombined_verdicts=40, seed=3)
    rows = recombined_verdicts(records, 0, cfg, MISSIONS, source="demo/train.jsonl")
    assert [r["meta"]["index"] for r in rows] == list(range(40))
    labels = Counter()
    for row in rows:
        meta, (system, user, answer) = row["meta"], (m["content"] for m in row["messages"])
        mission, rest = meta["source"].split("/", 1)
        label = rest.rsplit("::", 1)[1]
        assert (meta["mode"], meta["epoch"], meta["split"]) == ("verdict", 0, "demo/train") and "images" not in row
        summaries = [line.split(": ", 1)[1] for line in user.splitlines() if line.startswith("Image")]
        assert user.startswith(f"任务: {mission}\n") and system == VERDICT_SYSTEM
        outcome = RULES[mission].evaluate_summaries(summaries)
        assert label == outcome.verdict
        clauses = outcome.problems if label == "fail" else outcome.seen
        assert answer.startswith(f"Verdict: {'不通过' if label == 'fail' else '通过'}\nReason: {'; '.join(clauses)}; ")
        pool = {r["summary"] for r in records if r["ticket"]["mission"] == mission}
        assert set(summaries) <= pool
        labels[mission, label] += 1
    # Both missions take part and the labels alternate as the draws allow: both labels are common.
    assert {m for m, _ in labels} == set(MISSIONS)
    assert labels["BBU安装方式检查（正装）", "fail"] > 5 and labels["BBU安装方式检查（正装）", "pass"] > 5
    # Seeded by (seed, epoch, split): a rebuild repeats them, another epoch draws others.
    assert recombined_verdicts(records, 0, cfg, MISSIONS, source="demo/train.jsonl") == rows
    assert recombined_verdicts(records, 1, cfg, MISSIONS, source="demo/train.jsonl") != rows
    assert recombined_verdicts(records, 0, config(), MISSIONS, source="demo/train.jsonl") == []


def test_recombined_tickets_draw_only_photos_the_rule_reads_completely():
    legacy = {"mission": "BBU安装方式检查（正装）", "label": "fail", "group_id": "QC-L"}
    screw = "类别=螺丝、光纤插头,属性=BBU安装螺丝,备注=显示完整/不符合要求/生锈"
    records = [
        *_install_ticket("QC-P", [SCREW_OK]),
        *_install_ticket("QC-F", [SCREW_BAD]),
        _record("QC-L_1", [{"bbox_2d": [0, 0, 48, 32], "desc": BBU}], legacy),
        _record("QC-L_2", [{"bbox_2d": [0, 0, 32, 32], "desc": screw}], legacy),
    ]
    rows = recombined_verdicts(records, 0, config(recombined_verdicts=30, seed=1), MISSIONS, source="d/train.jsonl")
    users = [row["messages"][1]["content"] for row in rows]
    assert len(rows) == 30 and not any(records[-1]["summary"] in user for user in users)
    assert any(records[-2]["summary"] in user for user in users)  # the same ticket's BBU photo is complete
    # A mission whose photos are all unreadable ×N summaries takes no part.
    for record in records:
        record["summary"] = "BBU设备/华为×1"
    assert recombined_verdicts(records, 0, config(recombined_verdicts=3), MISSIONS, source="d/train.jsonl") == []


def test_a_ticket_of_a_mission_missing_from_the_table_is_an_error(dataset, tmp_path):
    records, source = dataset
    only_install = {"BBU安装方式检查（正装）": MISSIONS["BBU安装方式检查（正装）"]}
    with pytest.raises(VlqcError, match=r"train\.jsonl: record 1: unknown mission '挡风板安装检查'"):
        build_epoch(records, 0, only("summary"), tmp_path, only_install, source=source)


def test_write_dataset_adds_recombined_verdicts_to_train_epochs_only(dataset, tmp_path):
    records, source = dataset
    val = write_canonical(source.parent, [records[3]], "val.jsonl")
    stats = write_dataset([source], [val], config(epochs=2, recombined_verdicts=3), tmp_path / "data", MISSIONS)
    train_rows = list(read_jsonl(tmp_path / "data" / "train.jsonl", schema="sft_record"))
    recombined = [r for r in train_rows if "/recombined-" in r["meta"]["source"]]
    assert [(r["meta"]["epoch"], r["meta"]["index"]) for r in recombined] == [(e, k) for e in (0, 1) for k in range(3)]
    assert stats["train"]["rows"] == 2 * (5 + 3) and stats["val"]["rows"] == 1


def test_mode_mix_is_reproducible_per_seed_and_epoch():
    assert modes(7, 0) == modes(7, 0)
    assert modes(7, 0) != modes(7, 1)
    assert modes(7, 0) != modes(8, 0)


def test_mode_ratios_are_respected():
    ratios = {"dense": 0.1, "summary": 0.6, "verdict": 0.3}
    counts = Counter(modes(1, 0, ratios, n=20000))
    for mode in MODES:
        assert abs(counts[mode] / 20000 - ratios[mode]) < 0.015
    counts = Counter(modes(1, 0, ratios, n=20000, has_ticket=False))
    assert counts["verdict"] == 0 and abs(counts["dense"] / 20000 - 1 / 7) < 0.015
    assert set(modes(1, 0, {"dense": 0.0, "summary": 1.0, "verdict": 0.0})) == {"summary"}


def test_build_epoch_follows_choose_mode(dataset, tmp_path):
    records, source = dataset
    cfg = config(seed=5)
    for epoch in (0, 1):
        rows = build_epoch(records, epoch, cfg, tmp_path, MISSIONS, source=source)
        assert [r["meta"]["mode"] for r in rows] == [
            choose_mode(5, epoch, i, cfg.mode_ratios, "ticket" in rec, "canonical/train")
            for i, rec in enumerate(records)
        ]
        assert rows == build_epoch(records, epoch, cfg, tmp_path, MISSIONS, source=source)


# --- pixel cap ------------------------------------------------------------------------------------------


def test_pixel_cap_error_names_dataset_index_and_image(tmp_path):
    records = fixture_records()
    records[1] = _record("big", [{"bbox_2d": [40, 32, 120, 96], "desc": BBU}], WIND_FAIL, size=(160, 128))
    source = write_canonical(tmp_path, records)
    cfg = only("dense", max_pixels=16384)
    with pytest.raises(PixelCapError) as info:
        build_epoch(records, 0, cfg, tmp_path / "out", MISSIONS, source=source)
    message = str(info.value)
    assert str(source) in message and "record 1 " in message and "images/挡风板安装检查/QC-A/big.jpg" in message
    assert "160x128 = 20480 pixels" in message and "16384" in message and "resize_to_cap" in message


def test_sides_must_be_multiples_of_the_factor(tmp_path):
    records = [_record("odd", [], None, size=(100, 64))]
    source = write_canonical(tmp_path, records)
    with pytest.raises(PixelCapError, match="record 0 .*multiples of 32"):
        build_epoch(records, 0, only("summary"), tmp_path / "out", MISSIONS, source=source)


def test_image_that_disagrees_with_its_record_is_an_error(tmp_path):
    records = [_record("x", [], None)]
    source = write_canonical(tmp_path, records)
    Image.new("RGB", (64, 64)).save(tmp_path / records[0]["images"][0])
    with pytest.raises(PixelCapError, match="image is 64x64, record says 96x64"):
        build_epoch(records, 0, only("dense"), tmp_path / "out", MISSIONS, source=source)


def test_resize_to_cap_scales_image_and_geometry(tmp_path):
    record = _record("big", [{"bbox_2d": [40, 32, 120, 96], "desc": BBU}], WIND_FAIL, size=(160, 128))
    source = write_canonical(tmp_path, [record])
    cfg = config(max_pixels=16384, resize_to_cap=True)
    rel, out = prepare_image(record, 0, cfg, source, tmp_path / "out")
    assert rel == f"images/resized/{tmp_path.name}/train/挡风板安装检查/QC-A/big.jpg"
    assert (out["width"], out["height"]) == (128, 96)  # smart_resize of 160x128 under 16384 pixels
    assert out["objects"] == [{"bbox_2d": [32, 24, 96, 72], "desc": BBU}]  # x·0.8, y·0.75
    assert out["summary"] == record["summary"] and record["width"] == 160  # input untouched
    with Image.open(tmp_path / "out" / rel) as image:
        assert image.size == (128, 96)
        assert image.getpixel((64, 48))[0] > 180  # the yellow box moved with the pixels
        assert image.getpixel((20, 10))[0] < 120
    cfg = only("dense", max_pixels=16384, resize_to_cap=True)
    rows = build_epoch([record], 0, cfg, tmp_path / "out", MISSIONS, source=source)
    assert rows[0]["messages"][2]["content"].endswith(
        '{"object_1": {"bbox_2d": [250, 250, 750, 750], "desc": "' + BBU + '"}}'
    )


# --- augmentation ---------------------------------------------------------------------------------------


def test_augmentation_is_deterministic_per_epoch(dataset, tmp_path):
    records, source = dataset
    cfg = only("dense", augmentation=AUGMENT)

    def build(out: str, epoch: int) -> tuple[list[dict], list[bytes]]:
        rows = build_epoch(records, epoch, cfg, tmp_path / out, MISSIONS, source=source)
        return rows, [(tmp_path / out / r["images"][0]).read_bytes() for r in rows]

    first, again, other = build("a", 0), build("b", 0), build("c", 1)
    assert first == again
    assert all(r["images"][0].startswith("images/epoch_0/") for r in first[0])
    assert other[0][0]["images"][0].startswith("images/epoch_1/")
    assert all(a != b for a, b in zip(first[1], other[1]))
    plain = build_epoch(records, 0, only("dense"), tmp_path / "d", MISSIONS, source=source)
    # Boxes moved with the rotation (the image without objects has none to move).
    moved = [a["messages"][2]["content"] != p["messages"][2]["content"] for a, p in zip(first[0], plain)]
    assert moved == [bool(r["objects"]) for r in records]
    for row in first[0]:
        with Image.open(tmp_path / "a" / row["images"][0]) as image:
            assert image.size == (H, W)


def test_bypassed_and_val_rows_use_the_prepared_image(dataset, tmp_path):
    records, source = dataset
    bypass = only("summary", augmentation={**AUGMENT, "bypass_prob": 1.0})
    rows = build_epoch(records, 0, bypass, tmp_path / "a", MISSIONS, source=source)
    assert all(r["images"][0].startswith("images/source/") for r in rows)
    cfg = only("summary", augmentation=AUGMENT)
    rows = build_epoch(records, 0, cfg, tmp_path / "b", MISSIONS, source=source, augment=False)
    assert all(r["images"][0].startswith("images/source/") for r in rows)
    assert not (tmp_path / "a" / "images" / "epoch_0").exists() and not (tmp_path / "b" / "images" / "epoch_0").exists()


# --- dataset files and the row schema -----------------------------------------------------------------------


def test_write_dataset_concatenates_epochs_and_validates_rows(dataset, tmp_path):
    records, source = dataset
    val = write_canonical(source.parent, [records[3]], "val.jsonl")
    cfg = config(epochs=3, augmentation=AUGMENT)
    stats = write_dataset([source], [val], cfg, tmp_path / "data", MISSIONS)
    train_rows = list(read_jsonl(tmp_path / "data" / "train.jsonl", schema="sft_record"))
    val_rows = list(read_jsonl(tmp_path / "data" / "val.jsonl", schema="sft_record"))
    assert [r["meta"]["epoch"] for r in train_rows] == [0] * 5 + [1] * 5 + [2] * 5
    assert [r["meta"]["index"] for r in train_rows] == list(range(5)) * 3
    # Images prepared once for all epochs give the rows that each epoch alone gives.
    alone = [row for e in range(3) for row in build_epoch(records, e, cfg, tmp_path / "x", MISSIONS, source=source)]
    assert train_rows == alone
    assert [(r["meta"]["split"], r["meta"]["epoch"]) for r in val_rows] == [("canonical/val", 0)]
    for row in train_rows + val_rows:
        for image in row.get("images", []):
            assert (tmp_path / "data" / image).is_file()
    by_mode = {m: sum(r["meta"]["mode"] == m for r in train_rows) for m in MODES}
    assert stats["train"] == {"records": 5, "epochs": 3, "rows": 15, "by_mode": by_mode}
    assert stats["val"]["rows"] == 1 and stats["verdict_reason_fallback"] == {"canonical/train": 0, "canonical/val": 0}


def test_write_dataset_keeps_several_train_files_apart(tmp_path):
    records = fixture_records()
    first = write_canonical(tmp_path / "a", records)
    second = write_canonical(tmp_path / "b", records)  # the same sample ids, other images
    cfg = config(mode_ratios={"dense": 1}, augmentation=AUGMENT)
    write_dataset([first, second], [], cfg, tmp_path / "data", MISSIONS)
    rows = list(read_jsonl(tmp_path / "data" / "train.jsonl", schema="sft_record"))
    assert [r["meta"]["split"] for r in rows] == ["a/train"] * 5 + ["b/train"] * 5
    images = [r["images"][0] for r in rows]
    assert len(set(images)) == 10 and images[0] == "images/epoch_0/a/train/挡风板安装检查/QC-A/QC-A_10.jpg"
    data = tmp_path / "data"
    assert (data / images[0]).read_bytes() != (data / images[5]).read_bytes()  # other draws, other pixels
    assert (data / "val.jsonl").read_text(encoding="utf-8") == ""
    (tmp_path / "c" / "a").mkdir(parents=True)
    clash = write_canonical(tmp_path / "c" / "a", records)
    with pytest.raises(VlqcError, match="same <folder>/<name> a/train"):
        write_dataset([first, clash], [], cfg, tmp_path / "data2", MISSIONS)
    with pytest.raises(VlqcError, match="no canonical train file"):
        write_dataset([], [first], cfg, tmp_path / "data3", MISSIONS)


def _rows(tmp_path: Path) -> dict[str, dict]:
    records = fixture_records()[:4]  # tickets only, so that every mode applies
    source = write_canonical(tmp_path, records)
    return {m: build_epoch(records, 0, only(m), tmp_path / "out", MISSIONS, source=source)[1] for m in MODES}


def test_row_schema_rejects_broken_rows(tmp_path):
    rows = _rows(tmp_path)
    for row in rows.values():
        validate(row, "sft_record")
    dense, summary_row, verdict = (json.loads(json.dumps(rows[m])) for m in MODES)
    broken = []
    broken.append({**verdict, "images": ["images/source/x.jpg"]})  # verdict rows are text only
    broken.append({k: v for k, v in dense.items() if k != "images"})
    bad = json.loads(json.dumps(dense))
    bad["messages"][1]["content"] += "<image>"  # two tags for one image
    broken.append(bad)
    bad = json.loads(json.dumps(verdict))
    bad["messages"][2]["content"] = "Verdict: 通过\nReason: " + "长" * 241
    broken.append(bad)
    bad = json.loads(json.dumps(verdict))
    bad["messages"][2]["content"] = "Verdict: 需复核\nReason: x"
    broken.append(bad)
    bad = json.loads(json.dumps(summary_row))
    bad["messages"][2]["content"] = "<DOMAIN=BBU>, <TASK=DETECTION>\n{}"
    broken.append(bad)
    bad = json.loads(json.dumps(dense))
    bad["messages"] = bad["messages"][1:]
    broken.append(bad)
    broken.append({k: v for k, v in dense.items() if k != "meta"})
    for row in broken:
        with pytest.raises(SchemaError):
            validate(row, "sft_record")


# --- config ---------------------------------------------------------------------------------------------


def test_data_config_comes_from_the_resolved_training_config(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(
        "data:\n  modes: {dense: 0, summary: 3}\n  resize_to_cap: true\n  no_mission_prob: 0.5\n"
        "  recombined_verdicts: 7\n"
        "  augmentation: {bypass_prob: 1.0}\ntraining: {epochs: 3}\ntemplate: {max_pixels: 65536}\n"
        "custom: {mode_seed: 9}\n",
        encoding="utf-8",
    )
    cfg = data_config(load_train_config(path))
    assert (cfg.seed, cfg.epochs, cfg.max_pixels, cfg.factor, cfg.resize_to_cap, cfg.no_mission_prob) == (
        9,
        3,
        65536,
        32,
        True,
        0.5,
    )
    assert cfg.recombined_verdicts == 7
    assert cfg.mode_ratios == {"dense": 0.0, "summary": 3.0, "verdict": 0.25}  # verdict keeps its default
    assert cfg.augmentation["bypass_prob"] == 1.0 and cfg.augmentation["max_pixels"] == 65536
    with pytest.raises(VlqcError, match="not resolved: it lacks 'custom'"):
        data_config({"data": cfg.__dict__, "training": {"epochs": 1}})


def test_data_config_invariants():
    with pytest.raises(VlqcError, match="positive sum"):
        DataConfig(mode_ratios={"dense": 0, "summary": 0})
    with pytest.raises(VlqcError, match="positive sum"):
        DataConfig(mode_ratios={"caption": 1})
    with pytest.raises(VlqcError, match="smallest image"):
        DataConfig(max_pixels=1024)
    with pytest.raises(VlqcError, match="must not exceed the cap 65536"):
        DataConfig(max_pixels=65536, augmentation=load_augmentation({}, 2 * 65536))


def test_swift_env_brackets_the_cap(tmp_path):
    env = swift_env(tmp_path, config(max_pixels=786432))
    assert env == {"ROOT_IMAGE_DIR": str(tmp_path.resolve()), "IMAGE_MIN_TOKEN_NUM": "4", "IMAGE_MAX_TOKEN_NUM": "768"}


# --- CLI ------------------------------------------------------------------------------------------------


def test_cli_builds_the_dataset_and_reports_errors(dataset, tmp_path, capsys):
    records, source = dataset
    other = write_canonical(tmp_path / "other", records[3:])
    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text("training: {epochs: 2}\ntemplate: {max_pixels: 16384}\n", encoding="utf-8")
    missions = tmp_path / "missions.yaml"
    missions.write_text(json.dumps(MISSIONS, ensure_ascii=False), encoding="utf-8")

    def run(config: Path, out: str, *val: Path) -> int:
        args = ["--train", str(source), str(other), "--val", *map(str, val), "--config", str(config)]
        return sft_dataset.main([*args, "--missions", str(missions), "--out", str(tmp_path / out)])

    assert run(train_yaml, "data", source) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["train"]["records"], stats["train"]["rows"], stats["val"]["rows"]) == (7, 14, 5)
    assert len((tmp_path / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()) == 14
    resolved = tmp_path / "resolved.json"
    resolved.write_text(json.dumps(load_train_config(train_yaml)), encoding="utf-8")
    assert run(resolved, "d2", source) == 0  # a resolved JSON config gives the same rows
    assert (tmp_path / "d2" / "train.jsonl").read_bytes() == (tmp_path / "data" / "train.jsonl").read_bytes()
    assert run(train_yaml, "d3") == 0 and json.loads(capsys.readouterr().out.splitlines()[-1])["val"]["rows"] == 0
    train_yaml.write_text("data:\n  epochz: 2\n", encoding="utf-8")
    assert run(train_yaml, "d4") == 1
    assert "data.epochz: unknown key" in capsys.readouterr().err


# --- ms-swift ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from vlqc.train.base_model import build_tiny_base

    out = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny_base(out, seed=0)
    return out


def test_ms_swift_loads_and_encodes_a_row_of_each_mode(tiny_dir, tmp_path, monkeypatch):
    from swift import get_processor, get_template
    from swift.dataset import load_dataset
    from transformers import AutoProcessor

    rows = _rows(tmp_path)
    data = tmp_path / "out"
    write_jsonl(data / "train.jsonl", rows.values(), schema="sft_record")
    for key, value in swift_env(data, config()).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # relative image paths must resolve through ROOT_IMAGE_DIR, not the cwd
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))

    loaded, _ = load_dataset([str(data / "train.jsonl")], num_proc=1, load_from_cache_file=False)
    assert len(loaded) == 3
    template = get_template(get_processor(str(tiny_dir), model_type="qwen3_vl"), template_type="qwen3_vl")
    template.set_mode("train")
    processor = AutoProcessor.from_pretrained(tiny_dir)
    for row, (mode, original) in zip(loaded, rows.items()):
        encoded = template.encode(row)
        system, user, answer = (m["content"] for m in original["messages"])
        images = [Image.open(data / p) for p in original.get("images", [])]
        expected = processor.apply_chat_template(
            [*hf_messages(system, user, images or None), {"role": "assistant", "content": answer}],
            tokenize=True,
            return_dict=True,
        )
        assert encoded["input_ids"] == list(expected["input_ids"][0]), mode  # Stage-A/B prompts = training prompts
        answer_ids = processor.tokenizer.encode(answer + "<|im_end|>", add_special_tokens=False)
        assert [t for t in encoded["labels"] if t != -100] == answer_ids + processor.tokenizer.encode("\n")
        if mode == "verdict":
            assert "image_grid_thw" not in encoded
        else:
            # Not resized: the 96x64 image is 6x4 patches of 16 pixels.
            assert encoded["image_grid_thw"].tolist() == [[1, H // 16, W // 16]]
