"""Training plots on small files in the documented formats (docs/evaluation.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlqc.errors import SchemaError, VlqcError
from vlqc.jsonl import write_json
from vlqc.report import training

# ms-swift's logging.jsonl: training windows, an evaluation, the closing summary rows.
LOGGING = [
    {"loss": 11.9, "grad_norm": 3.9, "learning_rate": 0.0002, "epoch": 0.1, "global_step/max_steps": "1/3"},
    {"loss": 9.5, "grad_norm": 2.6, "learning_rate": 0.001, "epoch": 0.2, "global_step/max_steps": "2/3"},
    {"eval_loss": 8.25, "eval_runtime": 1.0, "epoch": 0.2, "global_step/max_steps": "2/3"},
    {"loss": 7.0, "grad_norm": 2.0, "learning_rate": 0.001, "epoch": 0.3, "global_step/max_steps": "3/3"},
    {"train_runtime": 9.1, "train_loss": 9.4, "epoch": 0.3, "global_step/max_steps": "3/3"},
    {"model_parameter_info": "tiny", "last_model_checkpoint": "x", "global_step": 3, "log_history": []},
]


def eval_loss_doc(step: int, overall: float, buckets=(1.0, 2.0, 3.0)) -> dict:
    short, medium, long = buckets
    return {
        "eval_loss": overall,
        "eval_loss_short": short,
        "eval_loss_medium": medium,
        "eval_loss_long": long,
        "eval_loss_dense": overall,
        "eval_loss_summary": overall,
        "eval_loss_verdict": None,
        "eval_label_tokens_total": 480,
        "eval_examples_total": 12,
        "eval_truncated_pct": 0.0,
        "bucket_counts": {"short": 4, "medium": 4, "long": 4},
        "mode_counts": {"dense": 6, "summary": 6, "verdict": 0},
        "step": step,
        "checkpoint": f"results/train/sft/demo/steps/step_{step}",
        "split": "results/eval/demo/split_seed17_eval12.json",
        "seconds": 2.0,
    }


def ablation_doc(correct=2.0, shuffle=2.5, zero=3.0, noise=3.25) -> dict:
    holds = correct < shuffle < min(zero, noise)
    return {
        "loss": {"correct": correct, "shuffled": shuffle, "zero": zero, "noise": noise},
        "delta_shuffle": shuffle - correct,
        "delta_zero": zero - correct,
        "delta_noise": noise - correct,
        "ordering_holds": holds,
        "ordering": f"correct {correct} < shuffled {shuffle} < min(zero {zero}, noise {noise}): "
        + ("holds" if holds else "does not hold"),
        "rows": 8,
        "seed": 29,
        "noise_std": 0.5,
        "label_tokens": 120,
        "checkpoint": "results/train/sft/demo/checkpoint",
        "candidates": "results/eval/demo/candidates.jsonl",
        "seconds": 1.5,
    }


def write_eval_losses(folder: Path, docs: list[dict]) -> list[Path]:
    paths = []
    for doc in docs:
        path = folder / f"step_{doc['step']}.json"
        write_json(path, doc, schema="eval_loss")
        paths.append(path)
    return paths


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_logging_gives_train_and_eval_points_and_skips_the_summary_rows(tmp_path):
    path = tmp_path / "logging.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in LOGGING) + "\n", encoding="utf-8")
    log = training.read_logging(path)
    assert log.train == [(1, 11.9), (2, 9.5), (3, 7.0)]
    assert log.eval == [(2, 8.25)]
    summary = training.plot_loss(path, tmp_path / "plots" / "loss.png", "demo")
    assert summary == {"train_points": 3, "eval_points": 1}
    assert png_size(tmp_path / "plots" / "loss.png")[0] > 100


@pytest.mark.parametrize(
    ("line", "message"),
    [("{not json", r"logging.jsonl:2: not valid JSON"), ('{"loss": 1, "global_step/max_steps": "x/3"}', "x/3")],
)
def test_a_bad_logging_line_is_named(tmp_path, line, message):
    path = tmp_path / "logging.jsonl"
    path.write_text(json.dumps(LOGGING[0]) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(VlqcError, match=message):
        training.read_logging(path)


def test_eval_buckets_sort_checkpoints_by_step(tmp_path):
    paths = write_eval_losses(tmp_path, [eval_loss_doc(3, 1.5), eval_loss_doc(2, 2.5, (2.0, None, 3.0))])
    out = tmp_path / "buckets.png"
    assert training.plot_eval_buckets(paths, out, "demo") == {"steps": [2, 3]}
    png_size(out)
    assert training.final_eval_loss(paths)["eval_loss"] == 1.5


def test_eval_loss_files_are_validated(tmp_path):
    path = tmp_path / "step_2.json"
    path.write_text(json.dumps({"eval_loss": 1.0}), encoding="utf-8")
    with pytest.raises(SchemaError, match="step_2.json"):
        training.plot_eval_buckets([path], tmp_path / "x.png", "demo")


@pytest.mark.parametrize(("doc", "verdict"), [(ablation_doc(), "PASS"), (ablation_doc(shuffle=1.9), "FAIL")])
def test_ablation_bars_carry_the_ordering_line(tmp_path, doc, verdict):
    path = tmp_path / "ablation.json"
    write_json(path, doc, schema="eval_ablation")
    assert training.ordering_verdict(doc) == verdict
    assert training.plot_ablation(path, tmp_path / "ablation.png", "demo") == {"ordering_holds": verdict == "PASS"}
    png_size(tmp_path / "ablation.png")
