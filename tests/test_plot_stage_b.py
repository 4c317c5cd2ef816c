"""Stage-A and Stage-B plots on small run files in the documented formats (docs/stage-a.md, docs/stage-b.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vlqc.errors import VlqcError
from vlqc.jsonl import write_json, write_jsonl
from vlqc.report import stage_a, stage_b
from vlqc.stage_b.engine import FALSE_PASS_TARGET
from vlqc.stage_b.metrics import confusion

MISSION = "挡风板安装检查"


def ticket(i: int, label: str, verdict: str, source: str = "model", failure: str | None = None, **flags) -> dict:
    """A group_report.jsonl row."""
    key = f"QC-{i}::{label}"
    return {
        "ticket_key": key,
        "group_id": f"QC-{i}",
        "label": label,
        "verdict": verdict,
        "source": source,
        "vote_strength": 0.0 if source == "no_vote" else 1.0,
        "low_agreement": flags.get("low_agreement", source == "no_vote"),
        "failure": failure,
        "in_manual_review": flags.get("in_manual_review", source == "no_vote"),
        "candidates": [{"grid_index": 0, "sample_index": 0, "temperature": 0.1, "verdict": verdict, "error": None}],
        "reason": "总结: 任务要求均满足",
        "guidance_step": 0,
        "epochs": [{"epoch": 1, "verdict": verdict}],
        "review": None,
        "reflections": [],
    }


# Ten tickets: four human fails, one of them passed by the model (false-pass rate 25 %).
TICKETS = [
    ticket(1, "fail", "pass"),
    ticket(2, "fail", "fail", source="guardrail"),
    ticket(3, "fail", "fail", source="no_vote", failure="format_error"),
    ticket(4, "fail", "fail"),
    *(ticket(i, "pass", "pass") for i in range(5, 9)),
    ticket(9, "pass", "fail", source="no_vote", failure="prompt_too_long"),
    ticket(10, "pass", "fail", low_agreement=True, in_manual_review=True),
]


def metrics_row(event: str, step: int, tickets: list[dict], epoch: int = 1) -> dict:
    everything = confusion((t["label"], t["verdict"]) for t in tickets)
    kept = confusion((t["label"], t["verdict"]) for t in tickets if not t["in_manual_review"])
    return {
        "event": event,
        "epoch": epoch,
        "global_step": step,
        "elapsed_seconds": 1.0 * step,
        "groups_per_second": 1.0,
        "eta_seconds": 0.0,
        "false_pass_rate": everything["fp_rate"],
        "include_manual_review": everything,
        "exclude_manual_review": kept,
    }


def write_run(folder: Path, tickets: list[dict] = TICKETS, mission: str = MISSION) -> Path:
    """A Stage-B run folder with the files the plots read."""
    write_jsonl(folder / "group_report.jsonl", tickets, schema="stage_b_group_report")
    rows = [
        metrics_row("logging_steps", 4, tickets[:4]),
        metrics_row("logging_steps", 8, tickets[4:8]),
        metrics_row("epoch_end", len(tickets), tickets),
    ]
    write_jsonl(folder / "metrics.jsonl", rows, schema="stage_b_metrics")
    write_json(
        folder / "need_review.json",
        {"mission": mission, "n": 0, "by_reason_code": {}, "items": []},
        schema="stage_b_need_review",
    )
    return folder


def stats_doc(mission: str, generated: int, generate_s: float, failed_by_reason: dict[str, int]) -> dict:
    failed = sum(failed_by_reason.values())
    rank = {"rank": 0, "world": 1, "images": generated, "resumed": 0, "generated": generated, "failed": 0}
    return {
        "mission": mission,
        "selected": 10,
        "written": 10 - failed,
        "failed": failed,
        "failed_by_reason": failed_by_reason,
        "rows": generated,
        "stray_rows": 0,
        "images": generated,
        "resumed": 0,
        "generated": generated,
        "generate_s": generate_s,
        "images_per_s": generated / generate_s if generated else None,
        "ranks": [{**rank, "generate_s": generate_s}],
    }


def png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_confusion_counts_every_ticket_with_its_final_verdict(tmp_path):
    counts = stage_b.confusion_counts(TICKETS)
    assert counts == {("pass", "pass"): 4, ("pass", "fail"): 2, ("fail", "pass"): 1, ("fail", "fail"): 3}
    folder = write_run(tmp_path)
    out = tmp_path / "plots" / "confusion.png"
    assert stage_b.plot_confusion(folder / "group_report.jsonl", out, f"{MISSION} eval/demo") == {
        "tickets": 10,
        "false_pass": 1,
    }
    png(out)


def test_outcomes_count_guardrail_overrides_flags_review_queue_and_hard_failures(tmp_path):
    folder = write_run(tmp_path)
    need_review = {"mission": MISSION, "n": 3, "by_reason_code": {"budget_exhausted": 3}, "items": []}
    groups = stage_b.outcome_counts(TICKETS, need_review)
    assert groups["verdict source"] == {"guardrail": 1, "model": 7, "no_vote": 2}
    assert groups["flags"] == {"guardrail overrides": 1, "low agreement": 3, "manual review": 3}
    assert groups["review queue"] == {"total": 3, "budget_exhausted": 3}
    assert groups["hard failures"] == {"format_error": 1, "prompt_too_long": 1}
    out = tmp_path / "outcomes.png"
    summary = stage_b.plot_outcomes(folder / "group_report.jsonl", folder / "need_review.json", out, MISSION)
    assert summary["tickets"] == 10 and summary["guardrail overrides"] == 1
    png(out)


def test_metrics_over_steps_and_the_final_rate(tmp_path):
    folder = write_run(tmp_path)
    assert stage_b.plot_metrics(folder / "metrics.jsonl", tmp_path / "metrics.png", MISSION) == {"rows": 3}
    png(tmp_path / "metrics.png")
    final = stage_b.final_metrics(folder / "metrics.jsonl")
    assert final["global_step"] == 10 and final["false_pass_rate"] == 0.25


def test_a_run_without_an_epoch_end_has_no_final_rate(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_jsonl(path, [metrics_row("logging_steps", 4, TICKETS[:4])], schema="stage_b_metrics")
    with pytest.raises(VlqcError, match="metrics.jsonl: no epoch_end row"):
        stage_b.final_metrics(path)


def test_false_pass_per_mission_against_the_target(tmp_path):
    good = [ticket(1, "fail", "fail"), ticket(2, "pass", "pass")]
    runs = [
        (MISSION, write_run(tmp_path / "a") / "metrics.jsonl"),
        ("BBU接地线检查", write_run(tmp_path / "b", good, "BBU接地线检查") / "metrics.jsonl"),
    ]
    out = tmp_path / "false_pass.png"
    assert stage_b.plot_false_pass(runs, out, "eval run demo") == {"missions": 2}
    assert png(out)[0] > 400
    assert FALSE_PASS_TARGET == 0.05  # the business target of docs/stage-b.md#metricsjsonl


def test_stage_a_plot_reads_each_missions_stats(tmp_path):
    paths = []
    for i, (mission, reasons) in enumerate([(MISSION, {"unparseable_summary": 4}), ("BBU接地线检查", {})]):
        path = tmp_path / mission / "stats.json"
        write_json(path, stats_doc(mission, 60 + i, 30.0, reasons), schema="stage_a_stats")
        paths.append(path)
    out = tmp_path / "stage_a.png"
    assert stage_a.plot_stage_a(paths, out) == {"missions": 2, "failed": 4}
    png(out)
    assert stage_a.plot_stage_a([], tmp_path / "none.png") == {"missions": 0}
