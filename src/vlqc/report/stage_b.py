"""Stage-B plots of a run folder (docs/stage-b.md#run-files): confusion matrix, false-pass rate and accuracy
over the run's steps, the tickets' outcomes (guardrail overrides, review queue, hard failures), and the
final false-pass rate of each mission against the business target (`FALSE_PASS_TARGET`, vlqc.stage_b.engine).

The positive class is `pass` (vlqc.stage_b.metrics): a false pass is a ticket a human failed and the model
passed. The confusion matrix counts every ticket of group_report.jsonl with its final verdict, a hard
failure as `fail`, as the metrics do.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable

from matplotlib.ticker import MaxNLocator

from vlqc.errors import VlqcError
from vlqc.jsonl import read_json, read_jsonl
from vlqc.report import figure
from vlqc.stage_b.engine import FALSE_PASS_TARGET, GROUP_REPORT_FILE, JSONL_SCHEMAS, METRICS_FILE
from vlqc.stage_b.metrics import EPOCH_END, LOGGING_STEPS, VERDICTS

TARGET_STYLE = {"color": "tab:red", "linestyle": "--", "linewidth": 1.5}


def read_group_report(path: str | os.PathLike) -> list[dict]:
    return list(read_jsonl(path, schema=JSONL_SCHEMAS[GROUP_REPORT_FILE]))


def read_metrics(path: str | os.PathLike) -> list[dict]:
    return list(read_jsonl(path, schema=JSONL_SCHEMAS[METRICS_FILE]))


def final_metrics(path: str | os.PathLike) -> dict:
    """The last epoch_end row: the run's final numbers."""
    rows = [row for row in read_metrics(path) if row["event"] == EPOCH_END]
    if not rows:
        raise VlqcError(f"{path}: no {EPOCH_END} row (the run did not finish an epoch)")
    return rows[-1]


def confusion_counts(tickets: Iterable[dict]) -> dict[tuple[str, str], int]:
    counts = Counter((t["label"], t["verdict"]) for t in tickets)
    return {(label, verdict): counts[label, verdict] for label in VERDICTS for verdict in VERDICTS}


def plot_confusion(group_report: str | os.PathLike, out: str | os.PathLike, title: str) -> dict:
    """Human label × final verdict, counts of tickets; the false-pass cell framed in red."""
    counts = confusion_counts(read_group_report(group_report))
    fig, (ax,) = figure.new(width=4.8, height=4.2)
    grid = [[counts[label, verdict] for verdict in VERDICTS] for label in VERDICTS]
    image = ax.imshow(grid, cmap="Blues", vmin=0, vmax=max(1, max(max(row) for row in grid)))
    ax.grid(False)
    names = {("pass", "pass"): "true pass", ("pass", "fail"): "false fail", ("fail", "pass"): "FALSE PASS"}
    names["fail", "fail"] = "true fail"
    for i, label in enumerate(VERDICTS):
        for j, verdict in enumerate(VERDICTS):
            text = f"{grid[i][j]}\n{names[label, verdict]}"
            ax.text(j, i, text, ha="center", va="center", fontsize=11, color=figure.ink(image, grid[i][j]))
    fp_cell = (VERDICTS.index("fail"), VERDICTS.index("pass"))
    ax.add_patch(
        figure.plt.Rectangle((fp_cell[1] - 0.5, fp_cell[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3)
    )
    ax.set_xticks(range(2), [f"model {v}" for v in VERDICTS])
    ax.set_yticks(range(2), [f"human {v}" for v in VERDICTS])
    n_fail = counts["fail", "pass"] + counts["fail", "fail"]
    rate = counts["fail", "pass"] / n_fail if n_fail else None
    ax.set_title(f"{title}\nfalse-pass rate {figure.percent(rate)} (target < {FALSE_PASS_TARGET:.0%})")
    figure.save(fig, out)
    return {"tickets": sum(counts.values()), "false_pass": counts["fail", "pass"]}


def plot_metrics(metrics_jsonl: str | os.PathLike, out: str | os.PathLike, title: str) -> dict:
    """False-pass rate and accuracy of each logging window over the tickets judged, the epochs' totals as
    large markers, the target as a red line."""
    rows = read_metrics(metrics_jsonl)
    fig, (ax,) = figure.new(width=7.0)
    if not rows:
        figure.empty(ax, f"{metrics_jsonl}: no metrics row")
    for event, style, suffix in ((LOGGING_STEPS, "o-", "window"), (EPOCH_END, "D", "epoch")):
        chosen = [row for row in rows if row["event"] == event]
        for key, color, name in (("fp_rate", "tab:red", "false-pass rate"), ("acc", "tab:blue", "accuracy")):
            points = [
                (row["global_step"], row["include_manual_review"][key])
                for row in chosen
                if row["include_manual_review"][key] is not None
            ]
            if points:
                size = 9 if event == EPOCH_END else 5
                ax.plot(*zip(*points), style, color=color, markersize=size, label=f"{name} ({suffix})")
    if rows:
        ax.axhline(FALSE_PASS_TARGET, **TARGET_STYLE, label=f"false-pass target {FALSE_PASS_TARGET:.0%}")
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("tickets judged (global step)")
        ax.set_ylabel("rate")
        ax.legend(fontsize=8)
    ax.set_title(f"{title}: metrics over steps")
    figure.save(fig, out)
    return {"rows": len(rows)}


def outcome_counts(tickets: list[dict], need_review: dict) -> dict[str, dict[str, int]]:
    """Groups of bars: how verdicts came about, the review queue by reason, hard failures by code."""
    return {
        "verdict source": dict(sorted(Counter(t["source"] for t in tickets).items())),
        "flags": {
            "guardrail overrides": sum(t["source"] == "guardrail" for t in tickets),
            "low agreement": sum(t["low_agreement"] for t in tickets),
            "manual review": sum(t["in_manual_review"] for t in tickets),
        },
        "review queue": {"total": need_review["n"], **need_review["by_reason_code"]},
        "hard failures": dict(sorted(Counter(t["failure"] for t in tickets if t["failure"]).items())),
    }


def plot_outcomes(
    group_report: str | os.PathLike, need_review_json: str | os.PathLike, out: str | os.PathLike, title: str
) -> dict:
    """Counts of tickets: verdict sources, guardrail overrides and other flags, the human review queue by
    reason code, hard failures by code."""
    tickets = read_group_report(group_report)
    need_review = read_json(need_review_json, schema="stage_b_need_review")
    groups = outcome_counts(tickets, need_review)
    fig, axes = figure.new(ncols=len(groups), width=3.4, height=4.0)
    for ax, (name, counts) in zip(axes, groups.items()):
        if not counts:
            figure.empty(ax, f"{name}: none")
            continue
        bars = ax.bar(list(counts), list(counts.values()), color="tab:gray")
        ax.bar_label(bars)
        ax.set_title(name)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.set_ylim(0, max(1, *counts.values()) * 1.15)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{title}: {len(tickets)} tickets")
    figure.save(fig, out)
    return {"tickets": len(tickets), **groups["flags"]}


def plot_false_pass(runs: Iterable[tuple[str, str | os.PathLike]], out: str | os.PathLike, title: str) -> dict:
    """The final false-pass rate of each mission's run, with the target; a bar over it is red."""
    finals = [(mission, final_metrics(path)) for mission, path in runs]
    fig, (ax,) = figure.new(width=max(5.0, 1.5 * len(finals) + 2))
    if not finals:
        figure.empty(ax, "no mission")
    else:
        names = [mission for mission, _ in finals]
        rates = [row["false_pass_rate"] for _, row in finals]
        colors = ["tab:gray" if r is None else "tab:red" if r >= FALSE_PASS_TARGET else "tab:green" for r in rates]
        bars = ax.bar(names, [r or 0.0 for r in rates], color=colors)
        for (_, row), bar in zip(finals, bars):
            block = row["include_manual_review"]
            text = f"{figure.percent(row['false_pass_rate'])}\n{block['fp']} false / n {block['n']}"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
        ax.axhline(FALSE_PASS_TARGET, **TARGET_STYLE, label=f"target < {FALSE_PASS_TARGET:.0%}")
        ax.set_ylim(0, max(0.2, *(r or 0.0 for r in rates)) * 1.3)
        ax.set_ylabel("false-pass rate (human fail, model pass)")
        ax.tick_params(axis="x", labelrotation=15)
        ax.legend()
    ax.set_title(title)
    figure.save(fig, out)
    return {"missions": len(finals)}
