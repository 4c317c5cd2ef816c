"""End to end: demo tickets → canonical JSONL with real Snakemake in a scratch folder."""

from __future__ import annotations

import json
import re

import pytest
from workflow_env import copy_workflow, snakemake

from vlqc.jsonl import read_jsonl

pytestmark = pytest.mark.e2e

SMALL_DEMO = "small.yaml"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    (workdir / SMALL_DEMO).write_text("demo: {tickets_per_mission: 4, seed: 7}\n", encoding="utf-8")
    return workdir


def test_dry_run_plans_the_data_jobs(workdir):
    result = snakemake(workdir, "--dry-run", "--configfile", SMALL_DEMO, "--", "results/data/demo/train.jsonl")
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.M))
    assert jobs == {"demo_tickets": "1", "convert_annotations": "1", "split_dataset": "1", "total": "3"}


def test_conversion_target_builds_and_validates(workdir):
    snakemake(workdir, "--configfile", SMALL_DEMO, "--", "results/data/demo/train.jsonl", "results/data/demo/val.jsonl")
    out = workdir / "results" / "data" / "demo"
    summary = json.loads((out / "validation_summary.json").read_text(encoding="utf-8"))
    assert summary["exports"] == summary["samples"] > 0  # fail-fast: every demo export converts
    assert summary["invalid_samples"] == {}
    assert set(summary["images"]["export_variants"]) == {"markResult", "dataList"}
    all_ids = {r["sample_id"] for r in read_jsonl(out / "all_samples.jsonl", schema="sample")}
    train = list(read_jsonl(out / "train.jsonl", schema="sample"))
    val = list(read_jsonl(out / "val.jsonl", schema="sample"))
    assert {r["sample_id"] for r in train} | {r["sample_id"] for r in val} == all_ids
    assert {r["sample_id"] for r in train}.isdisjoint(r["sample_id"] for r in val)
    for record in train[:20]:
        assert record["width"] % 32 == 0 and record["height"] % 32 == 0
        assert record["width"] * record["height"] <= 786432
        assert (out / record["images"][0]).is_file()
    assert (workdir / "results" / "logs" / "convert" / "demo.log").is_file()
    # A second run has nothing to do.
    again = snakemake(workdir, "--configfile", SMALL_DEMO, "--dry-run", "--", "results/data/demo/train.jsonl")
    assert "Nothing to be done" in again.stdout + again.stderr
