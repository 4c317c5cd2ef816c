"""Stage-A plot: images per second and failed groups by reason, per mission.

Input: `results/stage_a/<mission>/stats.json` of each mission (schema stage_a_stats, docs/stage-a.md#stats).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from matplotlib.ticker import MaxNLocator

from vlqc.jsonl import read_json
from vlqc.report import figure


def read_stats(paths: Iterable[str | os.PathLike]) -> list[dict]:
    return [read_json(path, schema="stage_a_stats") for path in paths]


def plot_stage_a(stats_files: Iterable[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Left: images/s of each mission's run (generated photos over the slowest rank's generate seconds).
    Right: its groups, written and failed, the failures stacked by reason code."""
    stats = read_stats(stats_files)
    missions = [s["mission"] for s in stats]
    fig, (speed, groups) = figure.new(ncols=2, width=max(5.0, 1.6 * len(missions) + 2), height=4.5)
    if not stats:
        figure.empty(speed, "no mission")
        figure.empty(groups, "no mission")
        figure.save(fig, out)
        return {"missions": 0}
    rates = [s["images_per_s"] or 0.0 for s in stats]
    bars = speed.bar(missions, rates, color="tab:blue")
    for s, bar in zip(stats, bars):
        label = "n/a" if s["images_per_s"] is None else f"{s['images_per_s']:.3g}"
        speed.annotate(
            f"{label}\n{s['generated']} in {s['generate_s']:.0f} s",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    speed.set_ylabel("images / s (generate time)")
    speed.set_title("Stage-A throughput")
    speed.margins(y=0.25)
    bottom = [s["written"] for s in stats]
    groups.bar(missions, bottom, color="tab:green", label="written")
    reasons = sorted({reason for s in stats for reason in s["failed_by_reason"]})
    palette = ["tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
    for i, reason in enumerate(reasons):
        heights = [s["failed_by_reason"].get(reason, 0) for s in stats]
        groups.bar(missions, heights, bottom=bottom, color=palette[i % len(palette)], label=f"failed: {reason}")
        bottom = [b + h for b, h in zip(bottom, heights)]
    groups.set_ylim(0, max(1, *bottom) * 1.3)  # room for the legend
    groups.yaxis.set_major_locator(MaxNLocator(integer=True))
    groups.set_ylabel("groups")
    groups.set_title("Stage-A groups: written and failed by reason")
    groups.legend(fontsize=8)
    for ax in (speed, groups):
        ax.tick_params(axis="x", labelrotation=15)
    figure.save(fig, out)
    return {"missions": len(stats), "failed": sum(s["failed"] for s in stats)}
