"""Sweeps: a grid of training runs from one base config, each point scored on the shared eval set.

Contract (docs/evaluation.md#sweeps): `sweeps.<name>` names a base training config and axes, each a
dotted training-config key with a list of values. The grid is the cross product of the axes, in
the order they are written; each point is a run of its own in `results/sweeps/<name>/<point>/`:

- `config.json`: the base config (its `extends:` chain merged) with the point's values and
  `training.max_steps` set (an axis may set max_steps itself), resolved by
  `vlqc.train.config.load_train_config`, the one loader of training configs;
- `data/`, `checkpoint/`, `logging.jsonl`: built and trained as any run;
- `eval_loss.json`, `ablation.json`: its final checkpoint on the shared eval set.

A point's name joins `<key>-<value>` for every axis with `__` (the key's last part; the whole
dotted key where two axes share a last part): `learning_rate-0.001__train_vit_norms-false`. A value
is written as JSON (a list as its items joined by `+`), anything outside `[A-Za-z0-9._+-]` as `_`;
two values of an axis that come out the same are an error.

Its score is `eval_loss − weight·(delta_shuffle + delta_zero)`: low loss, and a loss that rises
when the photos are taken away (a model that reads them). Lower is better. `summary.csv` has one
row per point in grid order; `winner.json` names the lowest score, ties going to the point that
comes first in the grid.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlqc.errors import SchemaError, VlqcError
from vlqc.jsonl import atomic_open, read_json, read_jsonl, write_json
from vlqc.schemas import load, validate
from vlqc.train.config import SCHEMA as TRAIN_SCHEMA
from vlqc.train.config import load_train_config

SUMMARY_ROW_SCHEMA = "sweep_summary_row"
WINNER_SCHEMA = "sweep_winner"
LOSS_KEYS = ("eval_loss", "eval_loss_short", "eval_loss_medium", "eval_loss_long")
DELTA_KEYS = ("delta_shuffle", "delta_zero", "delta_noise")
# summary.csv: the point, its axes (one column per dotted key, between these), the numbers.
COLUMNS = ("point", *LOSS_KEYS, *DELTA_KEYS, "score", "seconds_per_step", "steps")
UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its folder name and its value of every axis (dotted key → value)."""

    name: str
    values: Mapping[str, Any]


# --- the grid ------------------------------------------------------------------------------


def grid(sweep_name: str, sweep: Mapping[str, Any]) -> list[Point]:
    """Every point of `sweep` (a validated `sweeps.<name>` entry), in the cross product's order."""
    axes = sweep["axes"]
    for key, values in axes.items():
        _check_key(sweep_name, key)
        texts = [_value_text(value) for value in values]
        twice = sorted({text for text in texts if texts.count(text) > 1})
        if twice:
            raise VlqcError(f"sweeps.{sweep_name}.axes.{key}: values that name the same point: {', '.join(twice)}")
    last = [key.rsplit(".", 1)[-1] for key in axes]
    labels = [part if last.count(part) == 1 else key for part, key in zip(last, axes)]
    points = []
    for combo in itertools.product(*axes.values()):
        name = "__".join(f"{label}-{_value_text(value)}" for label, value in zip(labels, combo))
        points.append(Point(name, dict(zip(axes, combo))))
    return points


def _value_text(value: Any) -> str:
    if isinstance(value, list):  # target_modules [q_proj, v_proj] → q_proj+v_proj
        return "+".join(_value_text(item) for item in value)
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return UNSAFE.sub("_", text)


def _check_key(sweep_name: str, key: str) -> None:
    """`key` names a setting of the training-config schema (a section as a whole is fine too)."""
    node = load(TRAIN_SCHEMA)
    for depth, part in enumerate(key.split(".")):
        if "$ref" in node and node["$ref"].endswith(".schema.json"):  # data.augmentation → augment
            node = load(node["$ref"].removesuffix(".schema.json"))
        properties = node.get("properties", {})
        if part not in properties:
            where = ".".join(key.split(".")[:depth]) or "the top level"
            known = f"{where} has: {', '.join(properties)}" if properties else f"{where} is a value, not a section"
            raise VlqcError(
                f"sweeps.{sweep_name}.axes: {key} is not a training-config key "
                f"(schemas/{TRAIN_SCHEMA}.schema.json); {known}"
            )
        node = properties[part]


def find_point(sweep_name: str, sweep: Mapping[str, Any], name: str) -> Point:
    points = grid(sweep_name, sweep)
    for point in points:
        if point.name == name:
            return point
    raise VlqcError(f"sweeps.{sweep_name}: no point {name!r}; its points: {', '.join(p.name for p in points)}")


def one_point(sweep: Mapping[str, Any], point: Point) -> dict[str, Any]:
    """What a point's config job reads of `sweep`: the base, max_steps, and each axis holding only the
    point's value. So changing another point's values, or the weight (the summary's alone), leaves
    this point's run alone."""
    return {
        "base": sweep["base"],
        "max_steps": sweep["max_steps"],
        "axes": {key: [value] for key, value in point.values.items()},
    }


def overrides(sweep_name: str, sweep: Mapping[str, Any], point: Point) -> dict[str, Any]:
    """The dotted keys a point sets on the base config."""
    return {
        "training.max_steps": sweep["max_steps"],
        **point.values,
        "custom.run_name": f"{sweep_name}-{point.name}",
    }


def point_config(sweep_name: str, sweep: Mapping[str, Any], point: Point) -> dict[str, Any]:
    """The resolved training config of `point`: base, its parents, the point's values."""
    try:
        return load_train_config(sweep["base"], overrides(sweep_name, sweep, point))
    except VlqcError as exc:
        raise type(exc)(f"sweeps.{sweep_name}, point {point.name}: {exc}") from exc


# --- score and summary ---------------------------------------------------------------------


def score(eval_loss: float, delta_shuffle: float, delta_zero: float, weight: float) -> float:
    """Lower is better: a low eval loss, and a loss that rises without the right photos."""
    return eval_loss - weight * (delta_shuffle + delta_zero)


def training_pace(logging_path: str | Path) -> tuple[float, int]:
    """(seconds per optimiser step, steps) of a run from ms-swift's logging.jsonl: its
    train_runtime less the evaluations it ran in between, over its global step."""
    runtime = steps = None
    evaluating = 0.0
    for record in read_jsonl(logging_path):
        if "eval_runtime" in record:
            evaluating += record["eval_runtime"]
        if "train_runtime" in record:
            runtime = record["train_runtime"]
            steps = record.get("global_step/max_steps", "")
    found = re.fullmatch(r"(\d+)/\d+", steps) if isinstance(steps, str) else None
    if runtime is None or not found or int(found[1]) < 1:
        raise SchemaError(
            f"{logging_path}: no final ms-swift record with train_runtime and global_step/max_steps"
            " (did training finish?)"
        )
    steps = int(found[1])
    return max(runtime - evaluating, 0.0) / steps, steps


def summary_row(
    point: Point, eval_loss: Mapping[str, Any], ablation: Mapping[str, Any], pace: tuple[float, int], weight: float
) -> dict[str, Any]:
    """One row of summary.csv; `eval_loss` and `ablation` are the point's validated documents."""
    row = {"point": point.name, "axes": dict(point.values)}
    row |= {key: eval_loss[key] for key in LOSS_KEYS}
    row |= {key: ablation[key] for key in DELTA_KEYS}
    row["score"] = score(eval_loss["eval_loss"], ablation["delta_shuffle"], ablation["delta_zero"], weight)
    row["seconds_per_step"], row["steps"] = pace
    return row


def read_point(root: str | Path, point: Point, weight: float) -> dict[str, Any]:
    """The summary row of `point` from its folder under `root` (results/sweeps/<name>)."""
    folder = Path(root) / point.name
    return summary_row(
        point,
        read_json(folder / "eval_loss.json", "eval_loss"),
        read_json(folder / "ablation.json", "eval_ablation"),
        training_pace(folder / "logging.jsonl"),
        weight,
    )


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows best first: lowest score; a score that is not a number (a diverged run) last; ties in grid order."""
    order = {id(row): i for i, row in enumerate(rows)}
    return sorted(rows, key=lambda row: (not math.isfinite(row["score"]), row["score"], order[id(row)]))


def winner(sweep_name: str, sweep: Mapping[str, Any], rows: list[dict[str, Any]], root: str | Path) -> dict[str, Any]:
    """winner.json: the best point, its numbers and where its run lives, and the ranking."""
    if not rows:
        raise VlqcError(f"sweeps.{sweep_name}: no points to choose from")
    ranked = rank(rows)
    best = ranked[0]
    return {
        "sweep": sweep_name,
        "point": best["point"],
        "axes": best["axes"],
        "score": best["score"],
        "weight": sweep["weight"],
        "eval_loss": best["eval_loss"],
        "delta_shuffle": best["delta_shuffle"],
        "delta_zero": best["delta_zero"],
        "run": str(Path(root) / best["point"]),
        "ranking": [{"point": row["point"], "score": row["score"]} for row in ranked],
    }


def summary_csv(rows: list[dict[str, Any]], axes: list[str]) -> str:
    """summary.csv: point, one column per axis (its dotted key), the losses, deltas, score and pace.
    Axis values are written as JSON (true, 0.001), strings as they are; an empty cell is a null."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([COLUMNS[0], *axes, *COLUMNS[1:]])
    for row in rows:
        cells = [row["point"], *(_cell(row["axes"][key]) for key in axes)]
        cells += [_cell(row[key]) for key in COLUMNS[1:]]
        writer.writerow(cells)
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def write_summary(
    sweep_name: str, sweep: Mapping[str, Any], root: str | Path, summary_path: str | Path, winner_path: str | Path
) -> dict[str, Any]:
    """Read every point of the sweep under `root`, write summary.csv and winner.json; returns the winner."""
    rows = [read_point(root, point, sweep["weight"]) for point in grid(sweep_name, sweep)]
    for row in rows:
        validate(row, SUMMARY_ROW_SCHEMA, f"{summary_path}: point {row['point']}")
    best = winner(sweep_name, sweep, rows, root)
    with atomic_open(summary_path) as fh:
        fh.write(summary_csv(rows, list(sweep["axes"])))
    write_json(winner_path, best, WINNER_SCHEMA)
    return best
