"""Sweeps (vlqc.evaluation.sweep): the grid and its point names, point configs (overrides, validation,
the resolved config.json), the score, summary.csv and winner.json on hand-made point folders."""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path

import pytest
from conftest import REPO

from vlqc.errors import SchemaError, VlqcError
from vlqc.evaluation import sweep as sw
from vlqc.jsonl import read_json
from vlqc.schemas import section
from vlqc.train.config import load_train_config

sys.path.insert(0, str(REPO / "scripts"))
import sweep_config  # noqa: E402  (the CLIs under scripts/)
import sweep_summary  # noqa: E402

ALIGN = str(REPO / "config/train/align.yaml")


def sweep_entry(**entry) -> dict:
    """A `sweeps.<name>` entry as the validated config has it (schema defaults filled)."""
    return section("config", "sweeps", {"s": {"base": ALIGN, **entry}}, "test")["s"]


# --- grid and names -------------------------------------------------------------------------


def test_default_demo_sweep_is_a_2x2_grid_with_readable_path_safe_names_in_axis_order():
    demo = section("config", "", {}, "test")["sweeps"]["demo"]
    assert demo["base"] == "config/train/align.yaml" and demo["weight"] == 0.1
    points = sw.grid("demo", demo)
    assert [p.name for p in points] == [
        "learning_rate-0.001__train_vit_norms-false",
        "learning_rate-0.001__train_vit_norms-true",
        "learning_rate-0.003__train_vit_norms-false",
        "learning_rate-0.003__train_vit_norms-true",
    ]
    assert points[1].values == {"tuner.learning_rate": 0.001, "tuner.train_vit_norms": True}
    assert all(re.fullmatch(r"[A-Za-z0-9._+-]+", p.name) for p in points)


def test_axes_sharing_a_last_part_are_named_by_their_whole_key():
    entry = sweep_entry(axes={"template.max_pixels": [65536], "data.augmentation.max_pixels": [32768, 65536]})
    assert [p.name for p in sw.grid("s", entry)] == [
        "template.max_pixels-65536__data.augmentation.max_pixels-32768",
        "template.max_pixels-65536__data.augmentation.max_pixels-65536",
    ]


def test_values_outside_the_safe_characters_are_written_as_underscores():
    axes = {"tuner.target_modules": [["all-linear"], ["q_proj", "v_proj"]], "tuner.vit_lr": [1e-5]}
    entry = sweep_entry(axes=axes)
    names = [p.name for p in sw.grid("s", entry)]
    assert names == ["target_modules-all-linear__vit_lr-1e-05", "target_modules-q_proj+v_proj__vit_lr-1e-05"]


def test_values_that_would_share_a_folder_are_an_error():
    with pytest.raises(VlqcError, match=r"sweeps\.s\.axes\.model\.attn_impl: values that name the same point: sdpa"):
        sw.grid("s", sweep_entry(axes={"model.attn_impl": ["sdpa", "eager", "sdpa"]}))


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (
            "tuner.learnig_rate",
            r"tuner\.learnig_rate is not a training-config key .*; tuner has: train_type, .*learning_rate",
        ),
        ("tuners.learning_rate", r"tuners\.learning_rate is not a training-config key .*; the top level has: "),
        (
            "tuner.learning_rate.peak",
            r"tuner\.learning_rate\.peak is not .*; tuner\.learning_rate is a value, not a section",
        ),
        # through the augment schema's $ref
        (
            "data.augmentation.bypas_prob",
            r"data\.augmentation\.bypas_prob is not .*; data\.augmentation has: .*bypass_",
        ),
    ],
)
def test_an_unknown_dotted_key_names_the_sweep_and_the_key(key, message):
    with pytest.raises(VlqcError, match=r"sweeps\.s\.axes: " + message):
        sw.grid("s", sweep_entry(axes={key: [1]}))


def test_keys_of_the_augment_schema_and_whole_sections_are_axes():
    entry = sweep_entry(axes={"data.augmentation.bypass_prob": [0.3, 1.0], "data.modes": [{"summary": 1.0}]})
    assert len(sw.grid("s", entry)) == 2


# --- point configs --------------------------------------------------------------------------


def test_point_config_is_the_base_with_the_points_values_and_max_steps():
    entry = sweep_entry(axes={"tuner.learning_rate": [0.003], "tuner.train_vit_norms": [True]}, max_steps=7)
    (point,) = sw.grid("s", entry)
    cfg = sw.point_config("s", entry, point)
    base = load_train_config(ALIGN)
    assert cfg["tuner"] == {**base["tuner"], "learning_rate": 0.003, "train_vit_norms": True}
    assert cfg["training"] == {**base["training"], "max_steps": 7}
    assert cfg["custom"]["run_name"] == f"s-{point.name}"
    assert {k: v for k, v in cfg.items() if k not in ("tuner", "training", "custom")} == {
        k: v for k, v in base.items() if k not in ("tuner", "training", "custom")
    }


def test_an_axis_on_max_steps_overrides_the_sweeps_max_steps():
    entry = sweep_entry(axes={"training.max_steps": [3, 5]}, max_steps=7)
    assert [sw.point_config("s", entry, p)["training"]["max_steps"] for p in sw.grid("s", entry)] == [3, 5]


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        ({"tuner.learning_rate": [-1.0]}, r"tuner\.learning_rate: -1\.0 is less than or equal to the minimum of 0"),
        ({"tuner.freeze_vit": [False]}, r"tuner\.train_vit_norms: has no effect while tuner\.freeze_vit is false"),
        ({"tuner.train_type": ["lora"]}, r"tuner\.train_vit_norms: needs train_type full"),
    ],
)
def test_a_bad_value_names_the_sweep_point_and_key(axes, message):
    entry = sweep_entry(axes={**axes, "tuner.train_vit_norms": [True]})
    (point,) = sw.grid("s", entry)
    with pytest.raises(SchemaError, match=rf"sweeps\.s, point {re.escape(point.name)}: .*align\.yaml.*\n.*{message}"):
        sw.point_config("s", entry, point)


def test_a_value_below_a_non_mapping_is_an_error_naming_it(tmp_path):
    base = tmp_path / "b.yaml"
    base.write_text("custom: {run_name: x}\n")
    entry = {**sweep_entry(axes={"tuner.learning_rate": [0.01]}), "base": str(base)}
    (point,) = sw.grid("s", entry)
    cfg = sw.point_config("s", entry, point)
    assert cfg["tuner"]["learning_rate"] == 0.01 and cfg["custom"]["run_name"] == f"s-{point.name}"
    base.write_text("tuner: 3\n")
    with pytest.raises(VlqcError, match=r"sweeps\.s, point .*: tuner is not a mapping, so tuner\.learning_rate cannot"):
        sw.point_config("s", entry, point)


def test_config_json_is_written_resolved_and_loads_back_to_itself(tmp_path):
    entry = sweep_entry(axes={"tuner.learning_rate": [0.001, 0.003], "tuner.train_vit_norms": [True]}, max_steps=4)
    point = sw.grid("s", entry)[1]
    out = tmp_path / "config.json"
    settings = json.dumps({"s": sw.one_point(entry, point)})
    assert sweep_config.main(["--sweep", "s", "--point", point.name, "--out", str(out), "--settings", settings]) == 0
    written = read_json(out)
    assert written == sw.point_config("s", entry, point)
    assert load_train_config(out) == written  # what scripts/train_sft.py and the eval jobs load


def test_a_points_config_job_reads_its_own_values_and_not_the_weight():
    entry = sweep_entry(axes={"tuner.learning_rate": [0.001, 0.003], "tuner.train_vit_norms": [True]}, weight=0.3)
    point = sw.grid("s", entry)[1]
    assert sw.one_point(entry, point) == {
        "base": ALIGN,
        "max_steps": 24,
        "axes": {"tuner.learning_rate": [0.003], "tuner.train_vit_norms": [True]},
    }
    assert sw.grid("s", {**entry, **sw.one_point(entry, point)}) == [point]


def test_config_job_refuses_a_point_its_settings_do_not_hold(tmp_path, capsys):
    entry = sweep_entry(axes={"tuner.learning_rate": [0.001, 0.003]})
    settings = json.dumps({"s": sw.one_point(entry, sw.grid("s", entry)[0])})
    assert (
        sweep_config.main(
            [
                "--sweep",
                "s",
                "--point",
                "learning_rate-0.003",
                "--out",
                str(tmp_path / "c.json"),
                "--settings",
                settings,
            ]
        )
        == 1
    )
    assert "sweeps.s: no point 'learning_rate-0.003'; its points: learning_rate-0.001" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("name", ["base", "lora", "full", "demo", "align"])
def test_every_shipped_config_resolved_as_json_loads_back_to_itself(name, tmp_path):
    cfg = load_train_config(REPO / f"config/train/{name}.yaml")
    path = tmp_path / "resolved_config.json"
    path.write_text(json.dumps(cfg))
    assert load_train_config(path) == cfg


def test_a_resolved_json_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"tuner": ')
    with pytest.raises(VlqcError, match=r"config\.json:1: not valid JSON"):
        load_train_config(path)


# --- score, pace, summary and winner ---------------------------------------------------------


def test_score_is_eval_loss_minus_weighted_shuffle_and_zero_deltas():
    assert sw.score(2.0, 0.5, 1.5, 0.1) == pytest.approx(2.0 - 0.1 * 2.0)
    assert sw.score(2.0, 0.5, 1.5, 0.0) == 2.0
    assert sw.score(2.0, -0.5, -0.5, 1.0) == pytest.approx(3.0)  # a model better off without photos pays


def logging_lines(steps: int, runtime: float, evals: tuple[float, ...] = ()) -> str:
    lines = [{"loss": 1.0, "global_step/max_steps": f"1/{steps}"}]
    lines += [{"eval_loss": 1.0, "eval_runtime": e, "global_step/max_steps": f"{steps}/{steps}"} for e in evals]
    lines.append({"train_runtime": runtime, "global_step/max_steps": f"{steps}/{steps}"})
    lines.append({"model_parameter_info": "x", "log_history": []})
    return "".join(json.dumps(line) + "\n" for line in lines)


def test_seconds_per_step_leave_out_ms_swifts_evaluations(tmp_path):
    path = tmp_path / "logging.jsonl"
    path.write_text(logging_lines(8, 20.0, evals=(3.0, 1.0)))
    assert sw.training_pace(path) == (pytest.approx(2.0), 8)


def test_a_logging_file_of_an_unfinished_run_is_named(tmp_path):
    path = tmp_path / "logging.jsonl"
    path.write_text(json.dumps({"loss": 1.0, "global_step/max_steps": "1/8"}) + "\n")
    with pytest.raises(SchemaError, match=r"logging\.jsonl: no final ms-swift record with train_runtime"):
        sw.training_pace(path)


def eval_loss_doc(loss: float, short: float | None = 1.0) -> dict:
    return {
        "eval_loss": loss,
        "eval_loss_short": short,
        "eval_loss_medium": 2.0,
        "eval_loss_long": 3.0,
        "eval_loss_dense": 3.0,
        "eval_loss_summary": 1.0,
        "eval_loss_verdict": None,
        "eval_label_tokens_total": 100,
        "eval_examples_total": 6,
        "eval_truncated_pct": 0.0,
        "bucket_counts": {"short": 2, "medium": 2, "long": 2},
        "mode_counts": {"dense": 3, "summary": 3, "verdict": 0},
        "step": 4,
        "checkpoint": "checkpoint",
        "split": "split.json",
        "seconds": 1.0,
    }


def ablation_doc(shuffle: float, zero: float, noise: float = 0.5) -> dict:
    correct = 2.0
    return {
        "loss": {"correct": correct, "shuffled": correct + shuffle, "zero": correct + zero, "noise": correct + noise},
        "delta_shuffle": shuffle,
        "delta_zero": zero,
        "delta_noise": noise,
        "ordering_holds": False,
        "ordering": "correct < shuffled < zero/noise: no",
        "rows": 4,
        "seed": 29,
        "noise_std": 0.2,
        "label_tokens": 40,
        "checkpoint": "checkpoint",
        "candidates": "candidates.jsonl",
        "seconds": 1.0,
    }


def write_point(root: Path, name: str, loss: float, shuffle: float, zero: float, short: float | None = 1.0) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "eval_loss.json").write_text(json.dumps(eval_loss_doc(loss, short)))
    (folder / "ablation.json").write_text(json.dumps(ablation_doc(shuffle, zero)))
    (folder / "logging.jsonl").write_text(logging_lines(4, 6.0, evals=(2.0,)))


LR_SWEEP = {"axes": {"tuner.learning_rate": [0.001, 0.003], "tuner.train_vit_norms": [False, True]}, "weight": 0.5}


def test_summary_has_one_row_per_point_and_the_winner_has_the_lowest_score(tmp_path):
    entry = sweep_entry(**LR_SWEEP)
    names = [p.name for p in sw.grid("s", entry)]
    # scores: 3.0 − 0.5·(0.2+0.2) = 2.8;  2.9 − 0.5·(1.0+1.0) = 1.9;  2.0 − 0 = 2.0;  2.5 − 0.5·(0+2) = 1.5
    for name, numbers in zip(names, [(3.0, 0.2, 0.2), (2.9, 1.0, 1.0), (2.0, 0.0, 0.0), (2.5, 0.0, 2.0)]):
        write_point(tmp_path, name, *numbers, short=None if name == names[0] else 1.0)
    best = sw.write_summary("s", entry, tmp_path, tmp_path / "summary.csv", tmp_path / "winner.json")
    with open(tmp_path / "summary.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "point", "tuner.learning_rate", "tuner.train_vit_norms", "eval_loss", "eval_loss_short", "eval_loss_medium",
        "eval_loss_long", "delta_shuffle", "delta_zero", "delta_noise", "score", "seconds_per_step", "steps",
    ]  # fmt: skip
    assert [row["point"] for row in rows] == names
    assert [(row["tuner.learning_rate"], row["tuner.train_vit_norms"]) for row in rows] == [
        ("0.001", "false"), ("0.001", "true"), ("0.003", "false"), ("0.003", "true"),
    ]  # fmt: skip
    assert [float(row["score"]) for row in rows] == pytest.approx([2.8, 1.9, 2.0, 1.5])
    assert rows[0]["eval_loss_short"] == "" and rows[1]["eval_loss_short"] == "1.0"  # an empty bucket
    assert rows[0]["delta_noise"] == "0.5" and rows[0]["seconds_per_step"] == "1.0" and rows[0]["steps"] == "4"
    assert best == read_json(tmp_path / "winner.json", "sweep_winner")
    assert best["point"] == names[3] and best["score"] == pytest.approx(1.5) and best["weight"] == 0.5
    assert best["axes"] == {"tuner.learning_rate": 0.003, "tuner.train_vit_norms": True}
    assert best["run"] == str(tmp_path / names[3])
    assert [r["point"] for r in best["ranking"]] == [names[3], names[1], names[2], names[0]]


def test_a_tie_goes_to_the_point_first_in_the_grid_and_a_diverged_run_ranks_last():
    rows = [{"point": p, "score": s} for p, s in [("a", math.nan), ("b", 1.0), ("c", 0.5), ("d", 0.5)]]
    assert [row["point"] for row in sw.rank(rows)] == ["c", "d", "b", "a"]
    assert [row["point"] for row in sw.rank(rows[::-1])] == ["d", "c", "b", "a"]


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        ("eval_loss.json", '{"eval_loss": 1.0}', r"eval_loss\.json: <top level>: 'eval_loss_short' is a required"),
        ("ablation.json", "{", r"ablation\.json.*not valid JSON"),
        ("logging.jsonl", '{"loss": 1}\n', r"logging\.jsonl: no final ms-swift record"),
    ],
)
def test_a_malformed_point_file_is_named(tmp_path, file, text, message):
    entry = sweep_entry(axes={"tuner.learning_rate": [0.001]})
    (point,) = sw.grid("s", entry)
    write_point(tmp_path, point.name, 2.0, 0.1, 0.1)
    (tmp_path / point.name / file).write_text(text)
    with pytest.raises(VlqcError, match=rf"{re.escape(point.name)}/{message}"):
        sw.write_summary("s", entry, tmp_path, tmp_path / "summary.csv", tmp_path / "winner.json")
    assert not (tmp_path / "summary.csv").exists() and not (tmp_path / "winner.json").exists()


def test_summary_script_writes_both_files_and_names_a_missing_point(tmp_path, capsys):
    entry = sweep_entry(axes={"tuner.learning_rate": [0.001, 0.003]})
    first, second = sw.grid("s", entry)
    write_point(tmp_path, first.name, 2.0, 0.1, 0.1)
    args = ["--sweep", "s", "--root", str(tmp_path), "--settings", json.dumps({"s": entry})]
    args += ["--summary", str(tmp_path / "summary.csv"), "--winner", str(tmp_path / "winner.json")]
    assert sweep_summary.main(args) == 1
    assert f"{second.name}/eval_loss.json" in capsys.readouterr().err
    write_point(tmp_path, second.name, 1.0, 0.1, 0.1)
    assert sweep_summary.main(args) == 0
    assert read_json(tmp_path / "winner.json")["point"] == second.name
