"""The headline numbers of the report, as a page and as JSON (schema report_headline).

- training: per run, the token-weighted eval loss of its last saved checkpoint (overall and per length
  bucket) and its image-ablation deltas with the ordering line; the serving run first;
- Stage-A: images/s and groups written and failed, per mission;
- Stage-B: the final false-pass rate of each mission's run against the business target, accuracy,
  the human review queue and the guardrail overrides.

The report shows the page, and the JSON gives the labels of its entry (rules/report.smk).
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable
from typing import NamedTuple

from vlqc.jsonl import read_json, write_json
from vlqc.report import figure
from vlqc.report.stage_a import read_stats
from vlqc.report.stage_b import FALSE_PASS_TARGET, final_metrics, outcome_counts, read_group_report
from vlqc.report.training import BUCKET_KEYS, ordering_verdict

SCHEMA = "report_headline"
DELTAS = ("delta_shuffle", "delta_zero", "delta_noise")


class RunFiles(NamedTuple):
    run: str
    eval_loss: str | os.PathLike  # eval_loss/step_<S>.json of the last saved checkpoint
    ablation: str | os.PathLike


class StageBFiles(NamedTuple):
    mission: str
    metrics: str | os.PathLike
    group_report: str | os.PathLike
    need_review: str | os.PathLike


def collect(
    runs: Iterable[RunFiles],
    serving_run: str,
    stage_a: Iterable[str | os.PathLike],
    stage_b: Iterable[StageBFiles],
    stage_b_run: str | None,
) -> dict:
    """The headline document from the files; the serving run comes first."""
    rows = []
    for files in runs:
        loss = read_json(files.eval_loss, schema="eval_loss")
        ablation = read_json(files.ablation, schema="eval_ablation")
        rows.append(
            {
                "run": files.run,
                "serving": files.run == serving_run,
                "step": loss["step"],
                "eval_loss": loss["eval_loss"],
                **{key: loss[key] for key in BUCKET_KEYS},
                "eval_examples_total": loss["eval_examples_total"],
                **{key: ablation[key] for key in DELTAS},
                "ordering_holds": ablation["ordering_holds"],
            }
        )
    rows.sort(key=lambda row: not row["serving"])
    missions = []
    for files in stage_b:
        final = final_metrics(files.metrics)
        counts = outcome_counts(
            read_group_report(files.group_report), read_json(files.need_review, "stage_b_need_review")
        )
        block = final["include_manual_review"]
        rate = final["false_pass_rate"]
        missions.append(
            {
                "mission": files.mission,
                "false_pass_rate": rate,
                "meets_target": None if rate is None else rate < FALSE_PASS_TARGET,
                "fp": block["fp"],
                "acc": block["acc"],
                "n": block["n"],
                "review_queue": counts["review queue"]["total"],
                "guardrail_overrides": counts["flags"]["guardrail overrides"],
            }
        )
    stage_a_rows = [
        {
            key: stats[key]
            for key in ("mission", "images_per_s", "generated", "generate_s", "selected", "written", "failed")
        }
        for stats in read_stats(stage_a)
    ]
    return {
        "serving_run": serving_run,
        "runs": rows,
        "stage_a": stage_a_rows,
        "stage_b": {"run": stage_b_run, "target": FALSE_PASS_TARGET, "missions": missions},
    }


def labels(doc: dict) -> dict[str, str]:
    """The report labels of the headline entry: the serving run's eval loss, the worst false-pass rate."""
    serving = next((row for row in doc["runs"] if row["serving"]), None)
    found = {"serving run": doc["serving_run"]}
    if serving is not None:
        found["eval loss"] = figure.loss(serving["eval_loss"])
    rates = [m["false_pass_rate"] for m in doc["stage_b"]["missions"] if m["false_pass_rate"] is not None]
    if rates:
        found["worst false-pass rate"] = f"{figure.percent(max(rates))} (target < {doc['stage_b']['target']:.0%})"
    return found


def _training(doc: dict) -> str:
    if not doc["runs"]:
        return "<p>No training run in this report.</p>"
    header = ["run", "step", "eval loss", "short", "medium", "long", "rows", "Δ shuffle", "Δ zero", "Δ noise"]
    header.append("ordering")
    rows = [
        [
            f"{row['run']} (serving)" if row["serving"] else row["run"],
            row["step"],
            figure.loss(row["eval_loss"]),
            *(figure.loss(row[key]) for key in BUCKET_KEYS),
            row["eval_examples_total"],
            *(f"{row[key]:+.4f}" for key in DELTAS),
            ordering_verdict(row),
        ]
        for row in doc["runs"]
    ]
    marked = [i for i, row in enumerate(doc["runs"]) if row["serving"]]
    return (
        "<p>Token-weighted eval loss of each run's last saved checkpoint on the shared eval set, per length "
        "bucket; the image ablations' deltas over the correct images (shuffled, black, noise) and whether "
        "correct &lt; shuffled &lt; black/noise holds (PASS) or not (FAIL).</p>\n"
        + figure.html_table(header, rows, marked)
    )


def _stage_a(doc: dict) -> str:
    if not doc["stage_a"]:
        return "<p>No Stage-A run in this report.</p>"
    header = ["mission", "images/s", "generated", "generate s", "groups selected", "written", "failed"]
    rows = [
        [
            r["mission"],
            figure.number(r["images_per_s"], 3),
            r["generated"],
            f"{r['generate_s']:.1f}",
            r["selected"],
            r["written"],
            r["failed"],
        ]
        for r in doc["stage_a"]
    ]
    return figure.html_table(header, rows)


def _stage_b(doc: dict) -> str:
    section = doc["stage_b"]
    if not section["missions"]:
        return "<p>No Stage-B run in this report.</p>"
    target = f"{section['target']:.0%}"
    header = ["mission", "false-pass rate", f"target < {target}", "false passes", "accuracy", "tickets"]
    header += ["review queue", "guardrail overrides"]
    rows = []
    for m in section["missions"]:
        met = {True: "met", False: "MISSED", None: "unknown (no fail-labelled ticket)"}[m["meets_target"]]
        rows.append(
            [
                m["mission"],
                figure.percent(m["false_pass_rate"]),
                met,
                m["fp"],
                figure.percent(m["acc"]),
                m["n"],
                m["review_queue"],
                m["guardrail_overrides"],
            ]
        )
    run = html.escape(section["run"] or "")
    return f"<p>Final metrics of the eval run <code>{run}</code> of each mission.</p>\n" + figure.html_table(
        header, rows
    )


def render(doc: dict) -> str:
    parts = [
        ("Training and evaluation", _training(doc)),
        ("Stage-A", _stage_a(doc)),
        ("Stage-B", _stage_b(doc)),
    ]
    return "\n".join(f"<h2>{title}</h2>\n{body}" for title, body in parts)


def write(doc: dict, html_out: str | os.PathLike, json_out: str | os.PathLike) -> None:
    write_json(json_out, doc, schema=SCHEMA)
    figure.write_html(html_out, f"vlqc headline (serving run {doc['serving_run']})", render(doc))
