"""Sweep plots: the summary table and a heatmap of the score over the grid (docs/evaluation.md#sweeps).

Inputs: `results/sweeps/<sweep>/summary.csv`, one row per point (`point`, a column per axis named by
its dotted training-config key, the point's numbers, `score` among them; an empty cell is null), and
`winner.json` (schema sweep_winner), which names the best point.
"""

from __future__ import annotations

import csv
import html
import itertools
import math
import os
from collections.abc import Sequence

from vlqc.errors import VlqcError
from vlqc.jsonl import read_json
from vlqc.report import figure

SCORE = "score"
POINT = "point"


def read_summary(path: str | os.PathLike, axes: Sequence[str]) -> list[dict[str, str]]:
    """The rows of summary.csv; it must have a column for each axis and the score."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [column for column in (POINT, *axes, SCORE) if column not in (reader.fieldnames or [])]
        if missing:
            raise VlqcError(f"{path}: no column {', '.join(missing)} (columns: {', '.join(reader.fieldnames or [])})")
        rows = list(reader)
    if not rows:
        raise VlqcError(f"{path}: no sweep point")
    return rows


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def _cell(text: str) -> str:
    value = _float(text)
    return text if value is None or text.strip().lower() in ("true", "false") else figure.number(value)


def winner(summary_csv: str | os.PathLike, winner_json: str | os.PathLike, rows: list[dict[str, str]]) -> int:
    """Index of the winner's row."""
    point = read_json(winner_json, schema="sweep_winner")["point"]
    found = [i for i, row in enumerate(rows) if row[POINT] == point]
    if not found:
        raise VlqcError(f"{winner_json}: the winner {point!r} is not a point of {summary_csv}")
    return found[0]


def write_table(
    summary_csv: str | os.PathLike,
    winner_json: str | os.PathLike,
    out: str | os.PathLike,
    sweep: str,
    axes: Sequence[str],
) -> dict:
    """summary.csv as an HTML table, the winner in bold."""
    rows = read_summary(summary_csv, axes)
    header = list(rows[0])
    best = winner(summary_csv, winner_json, rows)
    table = figure.html_table(header, ([_cell(row[c]) for c in header] for row in rows), [best])
    note = f"winner (lowest {SCORE}): {html.escape(rows[best][POINT])}, in bold"
    figure.write_html(out, f"Sweep {sweep}", f"<p>{len(rows)} points; {note}.</p>\n{table}")
    return {"points": len(rows), "winner": rows[best][POINT]}


def _values(rows: list[dict[str, str]], axis: str) -> list[str]:
    """An axis's values in grid order: numeric ascending when all are numbers, else as first seen."""
    seen = list(dict.fromkeys(row[axis] for row in rows))
    numbers = [_float(v) for v in seen]
    return [v for _, v in sorted(zip(numbers, seen))] if None not in numbers else seen


def plot_heatmap(
    summary_csv: str | os.PathLike,
    winner_json: str | os.PathLike,
    out: str | os.PathLike,
    sweep: str,
    axes: Sequence[str],
) -> dict:
    """Score over the grid: the first axis down, the other axes' combinations across; each cell gives the score
    and the point's eval loss; the winner is framed."""
    rows = read_summary(summary_csv, axes)
    best = rows[winner(summary_csv, winner_json, rows)]
    down = _values(rows, axes[0])
    across = list(itertools.product(*(_values(rows, axis) for axis in axes[1:])))
    index = {(row[axes[0]], *(row[a] for a in axes[1:])): row for row in rows}
    grid = [[_float(index[(d, *a)][SCORE]) if (d, *a) in index else None for a in across] for d in down]
    fig, (ax,) = figure.new(width=max(4.5, 1.8 * len(across) + 2.5), height=max(3.5, 0.9 * len(down) + 2))
    ax.grid(False)
    values = [v for line in grid for v in line if v is not None]
    masked = [[math.nan if v is None else v for v in line] for line in grid]
    image = ax.imshow(masked, cmap="viridis_r", aspect="auto")
    if values:
        fig.colorbar(image, ax=ax, label=f"{SCORE} (lower is better)")
    for i, d in enumerate(down):
        for j, a in enumerate(across):
            row = index.get((d, *a))
            if row is None:
                ax.text(j, i, "missing", ha="center", va="center")
                continue
            loss = _float(row.get("eval_loss", ""))
            text = f"{_cell(row[SCORE])}" + ("" if loss is None else f"\nloss {figure.number(loss)}")
            ax.text(j, i, text, ha="center", va="center", color=figure.ink(image, grid[i][j]), fontsize=9)
            if row is best:
                ax.add_patch(figure.plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3))
    ax.set_yticks(range(len(down)), down)
    ax.set_ylabel(axes[0])
    ax.set_xticks(range(len(across)), [", ".join(a) or "-" for a in across])
    ax.set_xlabel(", ".join(axes[1:]) or "(one axis)")
    ax.set_title(f"sweep {sweep}: {SCORE}")
    figure.save(fig, out)
    return {"points": len(rows), "cells": len(down) * len(across)}
