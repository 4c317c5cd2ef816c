"""The headline page and its numbers, and the script that writes them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO
from test_plot_stage_b import MISSION, stats_doc, ticket, write_run
from test_plot_training import ablation_doc, eval_loss_doc

from vlqc.jsonl import read_json, write_json
from vlqc.report import headline


def inputs(tmp_path):
    """Two runs (serving: lora), one mission's Stage-A stats and Stage-B run."""
    runs = []
    for run, loss, ablation in (("full", 2.75, ablation_doc(shuffle=1.5)), ("lora", 1.2345, ablation_doc())):
        write_json(tmp_path / run / "step_3.json", eval_loss_doc(3, loss, (1.0, 1.25, None)), schema="eval_loss")
        write_json(tmp_path / run / "ablation.json", ablation, schema="eval_ablation")
        runs.append(headline.RunFiles(run, tmp_path / run / "step_3.json", tmp_path / run / "ablation.json"))
    write_json(
        tmp_path / "stats.json", stats_doc(MISSION, 30, 12.0, {"unparseable_summary": 2}), schema="stage_a_stats"
    )
    folder = write_run(tmp_path / "stage_b")
    stage_b = headline.StageBFiles(
        MISSION, folder / "metrics.jsonl", folder / "group_report.jsonl", folder / "need_review.json"
    )
    return runs, [tmp_path / "stats.json"], [stage_b]


def test_headline_numbers_serving_run_first(tmp_path):
    runs, stage_a, stage_b = inputs(tmp_path)
    doc = headline.collect(runs, "lora", stage_a, stage_b, "demo")
    assert [(r["run"], r["serving"]) for r in doc["runs"]] == [("lora", True), ("full", False)]
    lora = doc["runs"][0]
    assert (lora["eval_loss"], lora["eval_loss_medium"], lora["eval_loss_long"], lora["step"]) == (
        1.2345,
        1.25,
        None,
        3,
    )
    assert (lora["delta_shuffle"], lora["delta_zero"], lora["ordering_holds"]) == (0.5, 1.0, True)
    assert doc["runs"][1]["ordering_holds"] is False
    [mission] = doc["stage_b"]["missions"]
    assert mission == {
        "mission": MISSION,
        "false_pass_rate": 0.25,
        "meets_target": False,
        "fp": 1,
        "acc": 0.7,
        "n": 10,
        "review_queue": 0,
        "guardrail_overrides": 1,
    }
    assert doc["stage_a"][0]["images_per_s"] == 2.5 and doc["stage_a"][0]["failed"] == 2
    assert headline.labels(doc) == {
        "serving run": "lora",
        "eval loss": "1.2345",
        "worst false-pass rate": "25.0 % (target < 5%)",
    }


def test_page_shows_the_numbers_as_text(tmp_path):
    runs, stage_a, stage_b = inputs(tmp_path)
    doc = headline.collect(runs, "lora", stage_a, stage_b, "demo")
    headline.write(doc, tmp_path / "headline.html", tmp_path / "headline.json")
    page = (tmp_path / "headline.html").read_text(encoding="utf-8")
    assert (
        '<tr class="marked"><td>lora (serving)</td><td>3</td><td>1.2345</td><td>1.0000</td><td>1.2500</td><td>n/a</td>'
        in page
    )
    assert "<td>+0.5000</td><td>+1.0000</td><td>+1.2500</td><td>PASS</td>" in page
    assert f"<td>{MISSION}</td><td>25.0 %</td><td>MISSED</td><td>1</td><td>70.0 %</td><td>10</td>" in page
    assert "<td>2.5</td><td>30</td><td>12.0</td>" in page
    assert read_json(tmp_path / "headline.json", schema=headline.SCHEMA) == doc


def test_without_stages_the_page_says_so(tmp_path):
    runs, _, _ = inputs(tmp_path)
    doc = headline.collect(runs[1:], "lora", [], [], None)
    assert "worst false-pass rate" not in headline.labels(doc)
    headline.write(doc, tmp_path / "h.html", tmp_path / "h.json")
    page = (tmp_path / "h.html").read_text(encoding="utf-8")
    assert "No Stage-A run in this report." in page and "No Stage-B run in this report." in page


def test_unknown_rate_without_fail_labelled_tickets(tmp_path):
    folder = write_run(tmp_path, [ticket(1, "pass", "pass")])
    files = headline.StageBFiles(
        MISSION, folder / "metrics.jsonl", folder / "group_report.jsonl", folder / "need_review.json"
    )
    doc = headline.collect([], "lora", [], [files], "demo")
    assert doc["stage_b"]["missions"][0]["meets_target"] is None
    assert "unknown (no fail-labelled ticket)" in headline.render(doc)


def test_script_writes_page_and_json_and_prints_the_labels(tmp_path):
    runs, stage_a, stage_b = inputs(tmp_path)
    args = ["--serving-run", "lora", "--html", tmp_path / "out.html", "--json", tmp_path / "out.json"]
    for files in runs:
        args += ["--run", *files]
    args += ["--stage-a", *stage_a, "--stage-b-run", "demo", "--stage-b", *stage_b[0]]
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts/report_headline.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["eval loss"] == "1.2345"
    assert read_json(tmp_path / "out.json", schema=headline.SCHEMA)["serving_run"] == "lora"
