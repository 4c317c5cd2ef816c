"""Training plots of one run: loss curves, eval loss per length bucket across checkpoints, image ablations.

Inputs (docs/evaluation.md): `results/train/sft/<run>/logging.jsonl` (ms-swift's log: one JSON object a
line, training rows with `loss`, evaluation rows with `eval_loss`, both with `global_step/max_steps`),
`eval_loss/step_<S>.json` (schema eval_loss) and `ablation.json` (schema eval_ablation).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, NamedTuple

from matplotlib.ticker import MaxNLocator

from vlqc.errors import VlqcError
from vlqc.jsonl import read_json, read_jsonl
from vlqc.report import figure

BUCKET_KEYS = ("eval_loss_short", "eval_loss_medium", "eval_loss_long")
# The variants of docs/evaluation.md#image-ablations, in the order a model that reads its photos ranks them,
# and the key of each one's delta over the correct images.
ABLATION_VARIANTS = ("correct", "shuffled", "zero", "noise")
DELTA_KEYS = {"shuffled": "delta_shuffle", "zero": "delta_zero", "noise": "delta_noise"}


class LossLog(NamedTuple):
    train: list[tuple[int, float]]  # (step, training loss) of each logged window
    eval: list[tuple[int, float]]  # (step, ms-swift's eval loss) of each evaluation


def read_logging(path: str | os.PathLike) -> LossLog:
    """The loss points of an ms-swift logging.jsonl; the closing summary rows carry no step and are skipped."""
    train, evals = [], []
    for number, row in enumerate(read_jsonl(path), start=1):
        if not isinstance(row, dict) or "global_step/max_steps" not in row:
            continue
        step = _step(row["global_step/max_steps"], f"{path}: row {number}")
        if isinstance(row.get("loss"), int | float):
            train.append((step, float(row["loss"])))
        if isinstance(row.get("eval_loss"), int | float):
            evals.append((step, float(row["eval_loss"])))
    return LossLog(train, evals)


def _step(value: Any, where: str) -> int:
    head = str(value).partition("/")[0]
    if not head.isdigit():
        raise VlqcError(f"{where}: global_step/max_steps is {value!r}, expected '<step>/<max_steps>'")
    return int(head)


def plot_loss(logging_jsonl: str | os.PathLike, out: str | os.PathLike, run: str) -> dict:
    """Training loss and ms-swift's eval loss over steps."""
    log = read_logging(logging_jsonl)
    fig, (ax,) = figure.new()
    if not log.train and not log.eval:
        figure.empty(ax, f"{logging_jsonl}: no loss logged")
    if log.train:
        ax.plot(*zip(*log.train), label="train loss", color="tab:blue")
    if log.eval:
        ax.plot(*zip(*log.eval), "o-", label="eval loss (ms-swift, val)", color="tab:orange")
    if log.train or log.eval:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
    ax.set_title(f"run {run}: loss")
    figure.save(fig, out)
    return {"train_points": len(log.train), "eval_points": len(log.eval)}


def read_eval_losses(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """The eval-loss files of a run's checkpoints, by step."""
    docs = [read_json(path, schema="eval_loss") for path in paths]
    return sorted(docs, key=lambda doc: doc["step"])


def plot_eval_buckets(step_files: Iterable[str | os.PathLike], out: str | os.PathLike, run: str) -> dict:
    """Token-weighted eval loss, overall and per length bucket, across the run's saved checkpoints."""
    docs = read_eval_losses(step_files)
    fig, (ax,) = figure.new()
    if not docs:
        figure.empty(ax, "no saved checkpoint")
    else:
        steps = [doc["step"] for doc in docs]
        for key, color in zip(("eval_loss", *BUCKET_KEYS), ("black", "tab:green", "tab:blue", "tab:purple")):
            points = [(doc["step"], doc[key]) for doc in docs if doc.get(key) is not None]
            if points and key == "eval_loss":
                label = f"overall ({docs[-1]['eval_examples_total']} rows)"
                ax.plot(*zip(*points), "o-", color=color, linewidth=2, label=label)
            elif points:
                bucket = key.removeprefix("eval_loss_")
                ax.plot(*zip(*points), "o--", color=color, label=f"{bucket} ({docs[-1]['bucket_counts'][bucket]} rows)")
        ax.set_xticks(steps)
        ax.set_xlabel("checkpoint step")
        ax.set_ylabel("eval loss (token-weighted)")
        ax.legend()
    ax.set_title(f"run {run}: eval loss per length bucket")
    figure.save(fig, out)
    return {"steps": [doc["step"] for doc in docs]}


def ordering_verdict(ablation: dict) -> str:
    """PASS when correct < shuffled < black/noise holds (docs/evaluation.md#image-ablations), else FAIL."""
    return "PASS" if ablation["ordering_holds"] else "FAIL"


def plot_ablation(ablation_json: str | os.PathLike, out: str | os.PathLike, run: str) -> dict:
    """Left: eval loss per image variant (points: the differences are small next to the loss). Right: each
    variant's delta over the correct images, the quantity that says whether the model reads its photos."""
    ablation = read_json(ablation_json, schema="eval_ablation")
    losses = ablation["loss"]
    variants = [v for v in ABLATION_VARIANTS if v in losses] + sorted(set(losses) - set(ABLATION_VARIANTS))
    fig, (loss_ax, delta_ax) = figure.new(ncols=2, width=4.6, height=4.2)
    values = [losses[v] for v in variants]
    colors = ["tab:green" if v == "correct" else "tab:gray" for v in variants]
    loss_ax.scatter(variants, values, s=80, color=colors, zorder=3)
    for variant, value in zip(variants, values):
        loss_ax.annotate(f"{value:.4f}", (variant, value), textcoords="offset points", xytext=(0, 8), ha="center")
    loss_ax.margins(x=0.2, y=0.3)
    loss_ax.set_ylabel("eval loss")
    loss_ax.set_title("loss per image variant")
    deltas = [(v, ablation[DELTA_KEYS[v]]) for v in variants if v in DELTA_KEYS]
    bars = delta_ax.bar(
        [v for v, _ in deltas], [d for _, d in deltas], color=["tab:green" if d > 0 else "tab:red" for _, d in deltas]
    )
    delta_ax.bar_label(bars, labels=[f"{d:+.4f}" for _, d in deltas])
    delta_ax.axhline(0, color="black", linewidth=1)
    delta_ax.margins(y=0.3)
    delta_ax.set_ylabel("loss − correct loss")
    delta_ax.set_title("delta over the correct images")
    holds = ablation["ordering_holds"]
    fig.suptitle(
        f"run {run}: image ablations on {ablation['rows']} rows, ordering {ordering_verdict(ablation)}\n"
        + ablation["ordering"],
        color="darkgreen" if holds else "darkred",
        fontsize=10,
    )
    figure.save(fig, out)
    return {"ordering_holds": holds}


def final_eval_loss(step_files: Iterable[str | os.PathLike]) -> dict | None:
    """The eval-loss document of the last saved checkpoint, None without one."""
    docs = read_eval_losses(step_files)
    return docs[-1] if docs else None
