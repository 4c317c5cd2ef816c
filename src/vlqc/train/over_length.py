"""Over-length rows of an SFT dataset: found before ms-swift starts, then redrawn or an error
(`data.over_length`; docs/prompts.md#over-length-rows).

ms-swift 4.6 on its own: with `--truncation_strategy delete` its template raises MaxLengthError for a
row longer than `--max_length`. Under `--strict false` its `LazyLLMDataset` then fetches a random other
row (up to 10 tries), without a log line and without a count; under `--strict true` the error stops
training. vlqc always runs it strict, and measures every row first with the same template and
processor settings ms-swift trains with (`template.encode(..., return_length=True)`, ms-swift's own
length), so nothing is dropped where nobody sees it:

- `resample` (the default): each over-length train row is replaced by a fitting row of the same
  file, drawn with an RNG seeded by (training.seed, row index), so a rerun redraws the same rows and
  the epoch keeps its number of steps; an over-length val row is dropped (a duplicate would only
  reweigh the eval loss). The fitted files are written to the job's work folder and handed to
  ms-swift in place of the built ones.
- `error`: the job stops, naming the rows.

Either way the counts (rows, over-length, redrawn, dropped, the longest length, the first
over-length rows) go to the job's log and to run_metadata.json (`over_length`).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlqc.errors import VlqcError
from vlqc.evaluation.loss import IGNORE_INDEX, scoped_environ
from vlqc.jsonl import read_jsonl, write_jsonl
from vlqc.train.sft_data import ROW_SCHEMA, data_config, swift_env

log = logging.getLogger(__name__)

POLICIES = ("resample", "error")
EXAMPLES = 10  # over-length rows named in the log, the manifest and an error


class RowLengths:
    """ms-swift's encoded length of a row (`lengths(row)`: prompt, image tokens and answer) and of its
    prompt (`lengths.prompt(row)`: the tokens before the first supervised one, i.e. before the assistant's
    answer, the Stage-2 length gate's measure), each distinct row encoded once for both."""

    def __init__(self, template: Any, data_dir: Path):
        self.template, self.data_dir = template, data_dir
        # Epochs repeat rows (every row the augmentation bypasses): each distinct row is encoded once.
        self.known: dict[str, tuple[int, int]] = {}

    def _measure(self, row: dict) -> tuple[int, int]:
        key = json.dumps([row["messages"], row.get("images")], ensure_ascii=False)
        if key not in self.known:
            inputs: dict[str, Any] = {"messages": [dict(m) for m in row["messages"]]}
            if row.get("images"):
                inputs["images"] = [str(self.data_dir / rel) for rel in row["images"]]
            encoded = self.template.encode(inputs, return_length=True)
            labels = encoded["labels"]
            prompt = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
            self.known[key] = int(encoded["length"]), prompt
        return self.known[key]

    def __call__(self, row: dict) -> int:
        return self._measure(row)[0]

    def prompt(self, row: dict) -> int:
        return self._measure(row)[1]


def length_counter(base_model: str | Path, data_dir: str | Path, cfg: Mapping[str, Any]) -> RowLengths:
    """The lengths of rows under the run's settings: the template of `swift sft` in train mode, images
    resolved against `data_dir` and the processor's pixel budget of training (`swift_env`), so an image
    is seen at the size training sees it."""
    from swift import get_processor, get_template

    data_dir = Path(data_dir)
    with scoped_environ({k: v for k, v in swift_env(data_dir, data_config(cfg)).items() if k != "ROOT_IMAGE_DIR"}):
        processor = get_processor(str(base_model), model_type="qwen3_vl")
    # No limit: the template measures, the policy decides.
    template = get_template(processor, template_type="qwen3_vl", max_length=None)
    template.set_mode("train")
    return RowLengths(template, data_dir)


def _describe(row: Mapping[str, Any], index: int, length: int) -> dict[str, Any]:
    meta = row.get("meta", {})
    return {"index": index, "length": length, "mode": meta.get("mode"), "source": meta.get("source")}


def apply_policy(
    rows: Sequence[dict],
    lengths: Sequence[int],
    limit: int,
    policy: str,
    *,
    redraw: bool,
    seed: int,
    where: str,
) -> tuple[list[dict], dict[str, Any]]:
    """The rows ms-swift gets, and the report: over-length rows redrawn (`redraw`, the train file) or
    dropped (val), or a VlqcError naming them under policy `error`."""
    if policy not in POLICIES:
        raise VlqcError(f"data.over_length must be one of {', '.join(POLICIES)}, not {policy!r}")
    over = [i for i, n in enumerate(lengths) if n > limit]
    report: dict[str, Any] = {
        "rows": len(rows),
        "over_length": len(over),
        "redrawn": 0,
        "dropped": 0,
        "max_length": limit,
        "longest": max(lengths, default=0),
        "examples": [_describe(rows[i], i, lengths[i]) for i in over[:EXAMPLES]],
    }
    if not over:
        return list(rows), report
    named = "; ".join(
        f"row {e['index']} ({e['mode']}, {e['source']}): {e['length']} tokens" for e in report["examples"]
    )
    if policy == "error":
        raise VlqcError(
            f"{where}: {len(over)} of {len(rows)} rows are longer than global_max_length {limit} "
            f"(data.over_length: error): {named}"
        )
    fitting = [i for i, n in enumerate(lengths) if n <= limit]
    if not fitting:
        raise VlqcError(f"{where}: every row is longer than global_max_length {limit}, none to draw instead: {named}")
    if not redraw:
        report["dropped"] = len(over)
        return [row for row, n in zip(rows, lengths) if n <= limit], report
    out = list(rows)
    for i in over:
        # A str seed is hashed with SHA-512: the same draw on every machine and Python run.
        out[i] = rows[random.Random(f"over_length:{seed}:{i}").choice(fitting)]
    report["redrawn"] = len(over)
    return out, report


def fit_dataset(
    data_dir: Path, work_dir: Path, base_model: Path, cfg: Mapping[str, Any], count: RowLengths | None = None
) -> tuple[Path, Path | None, dict[str, Any]]:
    """The train and val files ms-swift trains on (val None when there are no val rows left) and
    the report for the log and the manifest. Files that hold no over-length row are used as built;
    others are written fitted under `work_dir/data/`. `count`: the run's length counter, when the
    caller measures the rows again (the Stage-2 length gate)."""
    started = time.perf_counter()
    policy, limit, seed = cfg["data"]["over_length"], cfg["global_max_length"], cfg["training"]["seed"]
    count = count or length_counter(base_model, data_dir, cfg)
    paths: dict[str, Path | None] = {}
    report: dict[str, Any] = {"policy": policy}
    for part in ("train", "val"):
        source = data_dir / f"{part}.jsonl"
        rows = list(read_jsonl(source, ROW_SCHEMA))
        lengths = [count(row) for row in rows]
        kept, report[part] = apply_policy(
            rows, lengths, limit, policy, redraw=part == "train", seed=seed, where=str(source)
        )
        if part == "train" and not kept:
            raise VlqcError(f"{source}: no training rows")
        if report[part]["over_length"]:
            paths[part] = work_dir / "data" / f"{part}.jsonl"
            write_jsonl(paths[part], kept, schema=ROW_SCHEMA)
            log.warning(
                "%s: %d of %d rows are longer than global_max_length %d (longest %d tokens): %s %d (data.over_length "
                "%s); first: %s",
                source,
                report[part]["over_length"],
                report[part]["rows"],
                limit,
                report[part]["longest"],
                "redrew" if part == "train" else "dropped",
                report[part]["over_length"],
                policy,
                report[part]["examples"][:3],
            )
        else:
            paths[part] = source if kept else None
    report["seconds"] = round(time.perf_counter() - started, 2)
    log.info(
        "row lengths checked in %.1f s: train %d rows, %d over-length; val %d rows, %d over-length (limit %d)",
        report["seconds"],
        report["train"]["rows"],
        report["train"]["over_length"],
        report["val"]["rows"],
        report["val"]["over_length"],
        limit,
    )
    return paths["train"], paths["val"], report
