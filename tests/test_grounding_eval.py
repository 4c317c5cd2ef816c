"""The grounding job: which val photos it asks, how it batches and scores their answers, and its files
(scripts/eval_grounding.py on the tiny model)."""

from __future__ import annotations

import json
import runpy

import pytest
from conftest import REPO
from PIL import Image

from vlqc.errors import VlqcError
from vlqc.evaluation.grounding import answer_photos, select_photos
from vlqc.inference.prompts import dense_target
from vlqc.inference.sampling import Sampling
from vlqc.jsonl import read_json, read_jsonl, write_json, write_jsonl
from vlqc.missions import load_missions
from vlqc.schemas import defaults

SETTINGS = defaults("config", "eval.grounding")
MISSIONS = load_missions(REPO / "config/missions.yaml")
SCREW = "类别=BBU安装螺丝,可见性=完整,符合性=符合"
FIBRE = "类别=光纤,保护措施=有保护,弯曲半径=半径合理"


def record(n: int, domain: str | None = "BBU", size=(400, 300)) -> dict:
    """A canonical val record with a box, a polygon and a line."""
    return {
        "sample_id": f"photo{n}",
        "images": [f"images/photo{n}.jpg"],
        "width": size[0],
        "height": size[1],
        "domain": domain,
        "objects": [
            {"bbox_2d": [40, 30, 120, 90], "desc": SCREW},
            {"poly": [200, 50, 300, 60, 290, 150, 210, 140], "desc": SCREW},
            {"line": [10, 280, 200, 250, 390, 290], "desc": FIBRE},
        ],
        "summary": "无关图片",
        "source": f"photo{n}.json",
    }


def test_photos_are_a_seeded_draw_in_record_order_of_those_with_a_domain():
    records = [record(n, domain=None if n % 4 == 0 else "BBU") for n in range(12)]
    photos, eligible = select_photos(records, MISSIONS, 5, seed=3, where="val.jsonl")
    assert eligible == 9 and len(photos) == 5
    ids = [r["sample_id"] for r, _ in photos]
    assert ids == sorted(ids, key=lambda s: int(s[5:])) and "photo0" not in ids
    assert {domain for _, domain in photos} == {"BBU"}
    assert select_photos(records, MISSIONS, 5, seed=3, where="val.jsonl")[0] == photos
    assert select_photos(records, MISSIONS, 5, seed=4, where="val.jsonl")[0] != photos
    assert len(select_photos(records, MISSIONS, 50, seed=3, where="val.jsonl")[0]) == 9  # all when fewer


def test_no_photo_with_a_domain_is_an_error_naming_the_file():
    with pytest.raises(VlqcError, match="val.jsonl: no val photo with a domain"):
        select_photos([record(0, domain=None)], MISSIONS, 5, seed=3, where="val.jsonl")


def test_answers_are_batched_greedy_scored_and_written_per_photo(tmp_path):
    photos = [(record(n), "BBU") for n in range(3)]
    perfect = dense_target(photos[0][0])
    cut = perfect[: perfect.rindex("{") + 5]  # the last object cut off
    answers = {"photo0": perfect, "photo1": cut, "photo2": "无关图片"}
    calls = []

    def generate(requests, sampling):
        calls.append((len(requests), sampling))
        return [answers[sample_id] for sample_id, _ in requests]

    settings = {**SETTINGS, "batch_size": 2, "iou_thresholds": [0.5, 0.9]}
    metrics, rows = answer_photos(generate, lambda r, domain: (r["sample_id"], domain), photos, settings)
    assert [n for n, _ in calls] == [2, 1]
    assert {s for _, s in calls} == {Sampling(max_new_tokens=SETTINGS["max_new_tokens"], temperature=0.0)}
    assert [row["sample_id"] for row in rows] == ["photo0", "photo1", "photo2"]
    assert [(row["strict_ok"], row["salvaged"], row["pred_objects"]) for row in rows] == [
        (True, False, 3),
        (False, True, 2),
        (False, False, 0),
    ]
    assert rows[0]["at"][0] == {"iou_threshold": 0.5, "tp": 3, "fp": 0, "fn": 0}
    assert rows[1]["at"][0] == {"iou_threshold": 0.5, "tp": 2, "fp": 0, "fn": 1}
    assert metrics["images"] == 3 and metrics["gt_objects"] == 9 and metrics["pred_objects"] == 5
    assert metrics["parse"]["strict_failed"] == 2 and metrics["parse"]["salvaged"] == 1
    overall = metrics["overall"][0]
    assert (overall["tp"], overall["fp"], overall["fn"]) == (5, 0, 4)
    assert set(metrics["categories"]) == {"BBU安装螺丝", "光纤"}
    assert metrics["categories"]["BBU安装螺丝"]["gt_objects"] == 6
    # Both files pass their schemas.
    doc = {
        "step": 2,
        "checkpoint": "steps/step_2",
        "val": "val.jsonl",
        "seed": 31,
        "images_requested": 3,
        "images_eligible": 3,
        "max_new_tokens": 8,
        **metrics,
    }
    write_json(tmp_path / "step_2.json", doc, schema="eval_grounding")
    write_jsonl(tmp_path / "step_2.jsonl", rows, schema="eval_grounding_row")


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    records = [record(n, size=(400 + 40 * n, 300)) for n in range(3)]
    for n, r in enumerate(records):
        Image.new("RGB", (r["width"], r["height"]), (60 * n, 90, 120)).save(root / r["images"][0])
    write_jsonl(root / "val.jsonl", records, "sample")
    return root


def test_script_writes_metrics_and_answers_and_the_same_inputs_give_the_same_files(tiny_dir, val, tmp_path, capsys):
    main = runpy.run_path(str(REPO / "scripts" / "eval_grounding.py"))["main"]
    settings = json.dumps({"images": 2, "max_new_tokens": 8, "batch_size": 2})

    def run(folder):
        argv = [
            *("--checkpoint", str(tiny_dir), "--base", str(tiny_dir), "--config", str(REPO / "config/train/demo.yaml")),
            *("--val", str(val / "val.jsonl"), "--missions", str(REPO / "config/missions.yaml")),
            *("--images", str(val), "--step", "7", "--out", str(folder / "step_7.json")),
            *("--predictions", str(folder / "step_7.jsonl"), "--settings", settings),
        ]
        assert main(argv) == 0, capsys.readouterr().err
        return folder / "step_7.json", folder / "step_7.jsonl"

    out, predictions = run(tmp_path / "a")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 2
    doc = read_json(out, "eval_grounding")
    assert doc["step"] == 7 and doc["images"] == 2 and doc["images_eligible"] == 3 and doc["gt_objects"] == 6
    rows = list(read_jsonl(predictions, "eval_grounding_row"))
    assert len(rows) == 2 and all(row["domain"] == "BBU" for row in rows)
    again = run(tmp_path / "b")
    assert out.read_bytes() == again[0].read_bytes() and predictions.read_bytes() == again[1].read_bytes()
