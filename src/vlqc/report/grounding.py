"""Grounding plot of one run: precision, recall and F1 per category at the last saved checkpoint.

Input (docs/evaluation.md#grounding): `results/train/sft/<run>/grounding/step_<S>.json` (schema
eval_grounding) of the run's last saved step; the first of its IoU thresholds is plotted.
"""

from __future__ import annotations

import os

import numpy as np

from vlqc.jsonl import read_json
from vlqc.report import figure

METRICS = (("precision", "tab:blue"), ("recall", "tab:orange"), ("f1", "black"))


def plot_grounding(grounding_json: str | os.PathLike, out: str | os.PathLike, run: str) -> dict:
    """Bars of precision, recall and F1, overall then per category (most ground-truth objects first); a
    rate without a denominator (no predictions, or no objects) is left out and its bar reads n/a."""
    doc = read_json(grounding_json, schema="eval_grounding")
    first = doc["overall"][0]
    threshold = first["iou_threshold"]
    names = sorted(doc["categories"], key=lambda name: (-doc["categories"][name]["gt_objects"], name))
    groups = [("overall", doc["gt_objects"], first)] + [
        (name, doc["categories"][name]["gt_objects"], doc["categories"][name]["at"][0]) for name in names
    ]
    fig, (ax,) = figure.new(width=max(6.4, 1.1 * len(groups) + 2), height=4.6)
    if not doc["images"]:
        figure.empty(ax, f"{grounding_json}: no photo scored")
    else:
        x = np.arange(len(groups))
        width = 0.27
        for k, (metric, color) in enumerate(METRICS):
            values = [scores[metric] for _, _, scores in groups]
            bars = ax.bar(x + (k - 1) * width, [v or 0.0 for v in values], width, label=metric, color=color)
            ax.bar_label(bars, labels=["n/a" if v is None else f"{v:.2f}" for v in values], fontsize=7)
        ax.set_xticks(x, [f"{name}\n({n} gt)" for name, n, _ in groups], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.25)  # room for the legend above bars at 1
        ax.set_ylabel(f"at IoU {threshold:g} (lines: distance ≤ {doc['line_threshold']:g})")
        ax.legend(loc="upper center", ncols=3, fontsize=8)
    parse = doc["parse"]
    ax.set_title(
        f"run {run}, step {doc['step']}: grounding on {doc['images']} photos\n"
        f"parse failures {figure.percent(parse['parse_failure_rate'])}, "
        f"salvaged {figure.percent(parse['salvage_rate'])}, mean IoU {figure.number(first['mean_iou'], 3)}",
        fontsize=10,
    )
    figure.save(fig, out)
    return {"step": doc["step"], "f1": first["f1"], "categories": len(names)}
