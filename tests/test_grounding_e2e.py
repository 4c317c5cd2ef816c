"""End to end on the tiny model: the grounding metrics of every saved step of the LoRA run (found through
saved_steps) and the report's grounding plot. The workflow is conftest's `trained`."""

from __future__ import annotations

import pytest
from conftest import TRAINED_STEPS
from workflow_env import snakemake

from vlqc.jsonl import read_json, read_jsonl

pytestmark = pytest.mark.e2e

STEPS = (2, TRAINED_STEPS)  # conftest: save_steps 2
# Few photos and short answers: the tiny model was not trained long enough to answer well anyway.
OVERLAY = "eval: {grounding: {images: 3, max_new_tokens: 24, batch_size: 2, iou_thresholds: [0.5, 0.25]}}\n"
CONFIGS = ("--configfile", "e2e.yaml", "grounding.yaml")


def grounding(workdir, step: int):
    return workdir / f"results/train/sft/lora/grounding/step_{step}"


@pytest.fixture(scope="module")
def scored(trained):
    (trained / "grounding.yaml").write_text(OVERLAY, encoding="utf-8")
    steps = (f"{grounding(trained, step).relative_to(trained)}.json" for step in STEPS)
    snakemake(trained, *CONFIGS, "--", "results/plots/train/lora/grounding.png", *steps)
    return trained


def test_every_saved_step_is_scored_on_the_seeded_val_photos(scored):
    val = {r["sample_id"]: r for r in read_jsonl(scored / "results/data/demo/val.jsonl", "sample")}
    for step in STEPS:
        doc = read_json(f"{grounding(scored, step)}.json", "eval_grounding")
        rows = list(read_jsonl(f"{grounding(scored, step)}.jsonl", "eval_grounding_row"))
        assert doc["step"] == step and doc["checkpoint"].endswith(f"steps/step_{step}")
        assert doc["images"] == len(rows) == 3 and doc["iou_thresholds"] == [0.5, 0.25]
        assert all(row["sample_id"] in val for row in rows)
        assert doc["gt_objects"] == sum(len(val[row["sample_id"]]["objects"]) for row in rows)
        assert doc["pred_objects"] == sum(row["pred_objects"] for row in rows)
        assert doc["parse"]["strict_failed"] == sum(not row["strict_ok"] for row in rows)
        for entry in doc["overall"]:
            assert entry["tp"] + entry["fn"] == doc["gt_objects"] and entry["tp"] + entry["fp"] == doc["pred_objects"]
        assert "grounding" in (scored / f"results/logs/eval/grounding/lora/step_{step}.log").read_text()
    # Both steps draw the same photos.
    first, last = (list(read_jsonl(f"{grounding(scored, step)}.jsonl")) for step in STEPS)
    assert [r["sample_id"] for r in first] == [r["sample_id"] for r in last]
    assert (scored / "results/plots/train/lora/grounding.png").stat().st_size > 0
