"""End to end: the e2e sweep (conftest.TRAINED_OVERLAY: align.yaml at two learning rates, 2 steps) as a real
Snakemake target in the shared trained workflow: every point's run, summary.csv and winner.json."""

from __future__ import annotations

import csv
import re

import pytest
from safetensors import safe_open
from workflow_env import snakemake

from vlqc.jsonl import read_json

pytestmark = pytest.mark.e2e

POINTS = ("learning_rate-0.001", "learning_rate-0.003")


@pytest.fixture(scope="module")
def swept(trained):
    snakemake(trained, "--configfile", "e2e.yaml", "--", "results/sweeps/e2e/summary.csv")
    return trained


def tensors(folder, names):
    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        return {name: fh.get_tensor(name) for name in names}


def test_every_point_is_its_own_aligner_only_run(swept):
    root = swept / "results/sweeps/e2e"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(POINTS)
    frozen = ["model.language_model.layers.0.mlp.up_proj.weight", "model.visual.blocks.0.attn.qkv.weight"]
    aligner = ["model.visual.merger.linear_fc1.weight"]
    base = tensors(swept / "results/train/base/tiny", frozen + aligner)
    trained = {}
    for point, rate in zip(POINTS, (0.001, 0.003)):
        cfg = read_json(root / point / "config.json", "train_config")
        assert cfg["tuner"]["learning_rate"] == rate and cfg["training"]["max_steps"] == 2
        assert cfg["tuner"]["freeze_llm"] and cfg["tuner"]["freeze_vit"] and not cfg["tuner"]["freeze_aligner"]
        assert cfg["custom"]["run_name"] == f"e2e-{point}"
        assert read_json(root / point / "resolved_config.json") == cfg  # what training ran with
        weights = tensors(root / point / "checkpoint", frozen + aligner)
        for name in frozen:
            assert weights[name].equal(base[name]), f"{point}: {name} changed"
        assert not weights[aligner[0]].equal(base[aligner[0]]), f"{point}: the aligner did not train"
        trained[point] = weights[aligner[0]]
        read_json(root / point / "eval_loss.json", "eval_loss")
        read_json(root / point / "ablation.json", "eval_ablation")
    assert not trained[POINTS[0]].equal(trained[POINTS[1]])  # two runs, not one output twice


def test_summary_has_a_row_per_point_and_the_winner_scores_lowest(swept):
    root = swept / "results/sweeps/e2e"
    with open(root / "summary.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["point"] for row in rows] == list(POINTS)
    assert [row["tuner.learning_rate"] for row in rows] == ["0.001", "0.003"]
    for row in rows:
        eval_loss = read_json(root / row["point"] / "eval_loss.json")
        ablation = read_json(root / row["point"] / "ablation.json")
        assert float(row["eval_loss"]) == eval_loss["eval_loss"]
        assert float(row["delta_zero"]) == ablation["delta_zero"]
        expected = eval_loss["eval_loss"] - 0.1 * (ablation["delta_shuffle"] + ablation["delta_zero"])
        assert float(row["score"]) == pytest.approx(expected)
        assert int(row["steps"]) == 2 and float(row["seconds_per_step"]) > 0
    winner = read_json(root / "winner.json", "sweep_winner")
    assert winner["score"] == min(float(row["score"]) for row in rows)
    assert [r["point"] for r in winner["ranking"]][0] == winner["point"]


def planned(workdir, overlay: str) -> tuple[dict[str, int], str]:
    """Job counts by rule of a dry run of the e2e sweep with `overlay` on top of e2e.yaml, and its plan."""
    (workdir / "e2e_sweep_change.yaml").write_text(overlay, encoding="utf-8")
    target = "results/sweeps/e2e/summary.csv"
    plan = snakemake(workdir, "-n", "--configfile", "e2e.yaml", "e2e_sweep_change.yaml", "--", target).stdout
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", plan, flags=re.M)}, plan


def test_a_new_value_trains_only_its_own_point_and_a_new_weight_trains_nothing(swept):
    jobs, plan = planned(swept, "sweeps: {e2e: {axes: {tuner.learning_rate: [1.0e-3, 3.0e-3, 1.0e-2]}}}\n")
    assert jobs["sweep_config"] == jobs["sweep_train"] == jobs["sweep_eval_loss"] == jobs["sweep_ablation"] == 1
    assert "results/sweeps/e2e/learning_rate-0.01/config.json" in plan
    jobs, _ = planned(swept, "sweeps: {e2e: {weight: 0.5}}\n")
    assert jobs == {"sweep_summary": 1, "total": 1}
