"""End to end on the tiny model: eval candidates, the eval set, eval loss per saved checkpoint (LoRA and full)
and the image ablations, as Snakemake targets of conftest's `trained` workflow; and the per-row losses of the
eval job reproduce the eval_loss ms-swift logged while training."""

from __future__ import annotations

import json

import pytest
from conftest import TRAINED_STEPS
from PIL import Image
from workflow_env import snakemake

from vlqc.evaluation.ablation import VARIANTS
from vlqc.evaluation.loss import Scorer, token_weighted
from vlqc.jsonl import read_json, read_jsonl
from vlqc.train.config import load_train_config

pytestmark = pytest.mark.e2e

SPLIT = "results/eval/demo/split_seed17_eval12.json"  # e2e.yaml: eval.rows 12; split_seed by default
STEPS = (2, TRAINED_STEPS)  # conftest: save_steps 2


@pytest.fixture(scope="module")
def evaluated(trained):
    # The LoRA run only (a step is an adapter on the base); full steps load as the unit tests' tiny model does.
    targets = [f"results/train/sft/lora/eval_loss/step_{step}.json" for step in STEPS]
    targets.append("results/train/sft/lora/ablation.json")
    snakemake(trained, "--configfile", "e2e.yaml", "--", *targets)
    return trained


def test_eval_set_is_drawn_once_from_the_candidates(evaluated):
    candidates = list(read_jsonl(evaluated / "results/eval/demo/candidates.jsonl", "eval_row"))
    val = list(read_jsonl(evaluated / "results/data/demo/val.jsonl"))
    modes = [row["mode"] for row in candidates]
    assert modes.count("dense") == modes.count("summary") == len(val) and modes.count("verdict") >= 1
    split = read_json(evaluated / SPLIT, "eval_split")
    assert len(split["rows"]) == 12 and sum(split["bucket_counts"].values()) == 12
    ids = {row["id"] for row in candidates}
    assert {row["id"] for row in split["rows"]} <= ids
    for row in split["rows"]:
        assert all((evaluated / "results/data/demo" / path).is_file() for path in row["images"])


def test_eval_loss_per_saved_checkpoint(evaluated):
    docs = {}
    for step in STEPS:
        doc = read_json(evaluated / f"results/train/sft/lora/eval_loss/step_{step}.json", "eval_loss")
        assert doc["step"] == step and doc["checkpoint"].endswith(f"steps/step_{step}")
        assert doc["eval_examples_total"] == 12 and doc["eval_label_tokens_total"] > 0
        assert sum(doc["bucket_counts"].values()) == 12 and doc["eval_truncated_pct"] == 0
        assert doc["eval_loss"] > 0
        # Token accuracy, and the dense rows' label tokens by type (docs/prompts.md#token-types).
        assert 0 <= doc["eval_token_acc"] <= 1 and doc["mode_counts"]["dense"] > 0
        assert all(doc["dense_token_types"][kind]["tokens"] > 0 for kind in ("desc", "coordinate", "format"))
        docs[step] = doc
    # Each step's own weights are scored: training moved the loss between the two checkpoints.
    assert docs[STEPS[0]]["eval_loss"] != docs[STEPS[1]]["eval_loss"]
    assert "eval loss" in (evaluated / f"results/logs/eval/eval_loss/lora/step_{STEPS[0]}.log").read_text()


def test_ablation_of_the_final_checkpoint(evaluated):
    doc = read_json(evaluated / "results/train/sft/lora/ablation.json", "eval_ablation")
    assert set(doc["loss"]) == set(VARIANTS) and doc["rows"] == 8  # e2e.yaml: eval.ablation.rows 8
    assert doc["delta_zero"] == pytest.approx(doc["loss"]["zero"] - doc["loss"]["correct"])
    # Reported either way, never asserted on the tiny model.
    assert doc["ordering"].endswith(": holds" if doc["ordering_holds"] else ": does not hold")


def test_per_row_losses_reproduce_the_eval_loss_ms_swift_logged(evaluated):
    """ms-swift's eval_loss is the mean over eval batches (per_device_eval_batch_size rows, in order) of each
    batch's mean label loss. From the eval job's per-row sums and counts on the run's own val rows, that
    number comes out again: the rows are encoded and masked as training does, and the weights are the
    checkpoint's (a LoRA adapter on its base)."""
    out = evaluated / "results/train/sft/lora"
    logged = [json.loads(line) for line in (out / "logging.jsonl").read_text().splitlines()]
    want = [row["eval_loss"] for row in logged if "eval_loss" in row][-1]
    checkpoint = out / "checkpoint"
    batch = json.loads((checkpoint / "args.json").read_text())["per_device_eval_batch_size"]
    data = out / "data"
    val = list(read_jsonl(data / "val.jsonl"))
    rows = [
        {"id": str(n), "mode": r["meta"]["mode"], "bucket": "short", "messages": r["messages"]}
        for n, r in enumerate(val)
    ]
    images = [[Image.open(data / path).convert("RGB") for path in r.get("images", [])] for r in val]
    scorer = Scorer(checkpoint, evaluated / "results/train/base/tiny", load_train_config(out / "resolved_config.json"))
    losses = scorer.row_losses(rows, images, batch_size=4)
    means = [token_weighted(losses[i : i + batch]) for i in range(0, len(losses), batch)]
    assert sum(means) / len(means) == pytest.approx(want, rel=1e-4)
