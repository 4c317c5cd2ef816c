"""Sweep table and heatmap on a small summary.csv (docs/evaluation.md#sweeps)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from vlqc.errors import VlqcError
from vlqc.jsonl import write_json
from vlqc.report import sweeps

AXES = ["tuner.learning_rate", "tuner.train_vit_norms"]
COLUMNS = ["point", *AXES, "eval_loss", "eval_loss_short", "delta_shuffle", "delta_zero", "score", "step_seconds"]


def write_summary(path: Path, rows: list[list[object]], columns: list[str] = COLUMNS) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


# As the sweep writes them: axis values as JSON (true, 0.001).
ROWS = [
    ["lr0.003_norms1", "0.003", "true", 2.1, 2.0, 0.2, 0.3, 2.05, 1.5],
    ["lr0.001_norms0", "0.001", "false", 2.5, 2.4, 0.1, 0.1, 2.48, 1.4],
    ["lr0.003_norms0", "0.003", "false", 1.9, 1.8, 0.0, 0.1, 1.89, 1.4],
    ["lr0.001_norms1", "0.001", "true", 2.4, 2.3, 0.1, 0.2, 2.37, 1.6],
]


def write_winner(path: Path, point: str = "lr0.003_norms0", score: float = 1.89) -> Path:
    doc = {
        "sweep": "demo",
        "point": point,
        "axes": {"tuner.learning_rate": 0.003, "tuner.train_vit_norms": False},
        "score": score,
        "weight": 0.1,
        "eval_loss": 1.9,
        "delta_shuffle": 0.0,
        "delta_zero": 0.1,
        "run": f"results/sweeps/demo/{point}",
        "ranking": [{"point": point, "score": score}],
    }
    write_json(path, doc, schema="sweep_winner")
    return path


def test_table_marks_the_winner(tmp_path):
    summary, winner = write_summary(tmp_path / "summary.csv", ROWS), write_winner(tmp_path / "winner.json")
    out = tmp_path / "summary.html"
    assert sweeps.write_table(summary, winner, out, "demo", AXES) == {"points": 4, "winner": "lr0.003_norms0"}
    page = out.read_text(encoding="utf-8")
    assert '<tr class="marked"><td>lr0.003_norms0</td><td>0.003</td><td>false</td><td>1.9</td>' in page
    assert page.count('class="marked"') == 1 and "<th>tuner.learning_rate</th>" in page


def test_axis_values_in_grid_order():
    rows = [dict(zip(COLUMNS, map(str, row))) for row in ROWS]
    assert sweeps._values(rows, AXES[0]) == ["0.001", "0.003"]
    assert sweeps._values(rows, AXES[1]) == ["true", "false"]  # not numbers: as first seen


def test_heatmap_has_a_cell_per_point(tmp_path):
    summary, winner = write_summary(tmp_path / "summary.csv", ROWS), write_winner(tmp_path / "winner.json")
    out = tmp_path / "heatmap.png"
    assert sweeps.plot_heatmap(summary, winner, out, "demo", AXES) == {"points": 4, "cells": 4}
    with Image.open(out) as image:
        assert image.format == "PNG"
    one_axis = write_summary(
        tmp_path / "one.csv", [r[:2] + r[3:] for r in ROWS[:2]], [c for c in COLUMNS if c != AXES[1]]
    )
    other = write_winner(tmp_path / "other.json", "lr0.001_norms0", 2.48)
    assert sweeps.plot_heatmap(one_axis, other, tmp_path / "one.png", "demo", AXES[:1]) == {"points": 2, "cells": 2}


def test_a_summary_without_an_axis_column_is_named(tmp_path):
    summary = write_summary(
        tmp_path / "summary.csv", [row[:2] + row[3:] for row in ROWS], [c for c in COLUMNS if c != AXES[1]]
    )
    with pytest.raises(VlqcError, match=r"summary.csv: no column tuner.train_vit_norms"):
        sweeps.write_table(summary, write_winner(tmp_path / "winner.json"), tmp_path / "x.html", "demo", AXES)


def test_a_winner_that_is_no_point_is_named(tmp_path):
    summary = write_summary(tmp_path / "summary.csv", ROWS)
    with pytest.raises(VlqcError, match=r"winner.json: the winner 'gone' is not a point of .*summary.csv"):
        sweeps.write_table(summary, write_winner(tmp_path / "winner.json", "gone"), tmp_path / "x.html", "demo", AXES)
