"""End to end: the SFT data rule with the copy-paste ops on writes augment_telemetry.json that
agrees with the rows it wrote (real Snakemake on the demo data, in a scratch folder)."""

from __future__ import annotations

import pytest
from workflow_env import copy_workflow, snakemake

from vlqc.jsonl import read_json, read_jsonl
from vlqc.train.sft_data import TELEMETRY

pytestmark = pytest.mark.e2e

OVERLAY = """
demo: {tickets_per_mission: 4, seed: 7}
train:
  run: paste
  runs: {paste: config/train/e2e_paste.yaml}
"""
PASTE = """
extends: demo.yaml
training: {epochs: 2}
data:
  modes: {dense: 0.5, summary: 0.5, verdict: 0.0}
  recombined_verdicts: 0
  augmentation:
    bypass_prob: 0.2
    small_object_zoom_paste: {prob: 0.5}
    object_cluster_copy_paste: {prob: 0.5}
    line_segment_copy_paste: {prob: 0.5}
"""


def test_data_rule_writes_telemetry_that_agrees_with_the_rows(tmp_path):
    workdir = copy_workflow(tmp_path)
    (workdir / "e2e.yaml").write_text(OVERLAY, encoding="utf-8")
    (workdir / "config/train/e2e_paste.yaml").write_text(PASTE, encoding="utf-8")
    snakemake(workdir, "--configfile", "e2e.yaml", "--", "results/train/sft/paste/data")
    data = workdir / "results/train/sft/paste/data"
    telemetry = read_json(data / TELEMETRY, schema="augment_telemetry")
    assert telemetry["enabled"] and [e["epoch"] for e in telemetry["epochs"]] == [0, 1]
    assert telemetry["bank"]["small_object_zoom_paste"], "the demo photos have small objects to bank"
    rows = list(read_jsonl(data / "train.jsonl"))
    for entry in telemetry["epochs"]:
        image_rows = [r for r in rows if r["meta"]["epoch"] == entry["epoch"] and "images" in r]
        augmented = [r for r in image_rows if r["images"][0].startswith(f"images/epoch_{entry['epoch']}/")]
        assert entry["samples"] == len(image_rows) > 0
        assert entry["bypassed"] == len(image_rows) - len(augmented)
        objects = entry["objects"]
        assert objects["out"] == objects["in"] - objects["dropped"] + objects["pasted"]
        assert objects["pasted"] > 0 and entry["ops"]["small_object_zoom_paste"] > 0
