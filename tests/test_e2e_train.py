"""End to end on the tiny model: SFT through ms-swift (LoRA and full), every saved checkpoint kept, merge, equal
generation, the eval rule, and reruns when a file a job reads changes. The workflow is conftest's `trained`,
shared with the other e2e modules."""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import TRAINED_STEPS
from PIL import Image
from workflow_env import snakemake

from vlqc.inference.generation import Generator, Request, Sampling
from vlqc.jsonl import read_jsonl
from vlqc.train.evaluate import TARGETS, prior_baselines
from vlqc.train.merge import load_with_adapter
from vlqc.train.sft_data import group_tickets

pytestmark = pytest.mark.e2e


def test_training_outputs_and_run_manifest(trained):
    for run in ("lora", "full"):
        out = trained / "results/train/sft" / run
        rows = [json.loads(line) for line in (out / "logging.jsonl").read_text().splitlines()]
        assert any("loss" in row for row in rows), f"{run}: no loss logged"
        resolved = json.loads((out / "resolved_config.json").read_text())
        assert resolved["training"]["max_steps"] == TRAINED_STEPS
        sources = sorted(p.name for p in (out / "sources").glob("*.yaml"))
        assert sources[0].endswith("base.yaml") and sources[-1].endswith(f"e2e_{run}.yaml")
        metadata = json.loads((out / "run_metadata.json").read_text())
        assert metadata["packages"]["ms-swift"] == "4.6.0" and "git" in metadata
        # Every row was measured against global_max_length before ms-swift started (docs/prompts.md).
        over = metadata["over_length"]
        assert over["policy"] == "resample" and over["train"]["over_length"] == over["train"]["redrawn"] == 0
        assert over["train"]["rows"] == len((out / "data/train.jsonl").read_text().splitlines()) > 0
        assert 0 < over["train"]["longest"] <= resolved["global_max_length"]
        assert json.loads((out / "runtime_env.json").read_text())["HF_HUB_OFFLINE"] == "1"
        assert not (out / "swift").exists(), "the ms-swift work folder is temporary"
    assert (trained / "results/train/sft/lora/checkpoint/adapter_config.json").is_file()
    assert (trained / "results/train/sft/full/checkpoint/model.safetensors").is_file()


def test_every_saved_checkpoint_is_kept_and_the_last_is_the_checkpoint(trained):
    """save_steps 2 of 3 steps: checkpoints at 2 and at the last step, both kept (save_total_limit: all)."""
    for run, weights in (("lora", "adapter_model.safetensors"), ("full", "model.safetensors")):
        out = trained / "results/train/sft" / run
        assert sorted(p.name for p in (out / "steps").glob("step_*")) == ["step_2", f"step_{TRAINED_STEPS}"]
        last = out / "steps" / f"step_{TRAINED_STEPS}"
        assert json.loads((last / "trainer_state.json").read_text())["global_step"] == TRAINED_STEPS
        assert json.loads((out / "steps/step_2/trainer_state.json").read_text())["global_step"] == 2
        files = sorted(p.name for p in last.iterdir())
        assert files == sorted(p.name for p in (out / "checkpoint").iterdir() if p.name != ".snakemake_timestamp")
        assert (out / "checkpoint" / weights).samefile(last / weights), "the final checkpoint is linked, not copied"
        assert (out / "steps/step_2" / weights).read_bytes() != (last / weights).read_bytes()
    assert "Train:" in (trained / "results/logs/train_sft/lora.log").read_text()  # progress reaches the log


def test_merged_logits_equal_base_plus_adapter(trained):
    base = trained / "results/train/base/tiny"
    checkpoint = trained / "results/train/sft/lora/checkpoint"
    merged = Generator(trained / "results/train/sft/lora/merged")
    reference = load_with_adapter(base, checkpoint)
    request = Request("你是质检助手。", "<image>描述这张图片。", [Image.new("RGB", (96, 64), (180, 40, 40))])
    batch = merged.encode([request])
    with torch.inference_mode():
        want = reference(**batch).logits
        got = merged.model(**batch).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    # ...and the adapter changed something: the comparison would be empty otherwise.
    plain = Generator(base).model
    with torch.inference_mode():
        assert not torch.allclose(plain(**batch).logits, want, atol=1e-4)
    tokens = Sampling(max_new_tokens=12)
    merged_text = merged.generate([request], tokens)
    reference_ids = reference.generate(**batch, max_new_tokens=12, do_sample=False)
    adapter_text = merged.processor.batch_decode(
        reference_ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert merged_text == adapter_text


def test_eval_rule_scores_the_merged_model_on_val(trained):
    snakemake(trained, "--configfile", "e2e.yaml", "--", "results/train/sft/lora/eval.json")
    report = json.loads((trained / "results/train/sft/lora/eval.json").read_text())  # schema-checked when written
    train, val = (list(read_jsonl(trained / f"results/data/demo/{split}.jsonl")) for split in ("train", "val"))
    assert report["val_photos"] == len(val) and report["val_tickets"] == len(group_tickets(val))
    assert [e["truth"] for e in report["examples"]] == [r["summary"] for r in val[:5]]
    assert report["prior_baselines"] == prior_baselines(train, val)
    for name, goal in TARGETS.items():
        assert report["target_met"][name] == (report[name] >= goal)
    assert "eval verdicts" in (trained / "results/logs/eval_sft/lora.log").read_text()  # progress reaches the log


def planned_reasons(workdir, *targets: str, allowed: tuple[str, ...] = ()) -> dict[str, str]:
    """Rule → why Snakemake would run it, from a dry run of `targets` (empty: nothing to do). With `allowed`
    rules only those may run, so a job of an allowed rule whose upstream jobs do not run shows which of its
    own inputs changed. (In a workflow with a Snakemake checkpoint, jobs downstream of an allowed job that
    runs are planned too, whatever their rule: allow one rule at a time.)"""
    only = ("--allowed-rules", *allowed) if allowed else ()
    plan = snakemake(workdir, "--configfile", "e2e.yaml", "-n", *only, "--", *targets)
    blocks = re.finditer(r"^(?:rule|checkpoint) (\w+):\n((?:    .*\n)+)", plan.stdout, flags=re.M)
    return {block[1]: re.search(r"^    reason: (.*)$", block[2], flags=re.M)[1] for block in blocks}


@contextmanager
def edited(path: Path):
    """`path` with a comment added (Snakemake compares the content of a newer input with what the outputs
    were made from: a mere touch reruns nothing), the old text restored afterwards."""
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "\n# edited\n", encoding="utf-8")
    try:
        yield path
    finally:
        path.write_text(text, encoding="utf-8")


def test_editing_a_parent_config_or_the_missions_file_reruns_what_reads_it(trained):
    target = "results/train/sft/lora/eval.json"
    data, checkpoint = "results/train/sft/lora/data", "results/train/sft/lora/checkpoint"
    snakemake(trained, "--configfile", "e2e.yaml", "--", target)  # a no-op after the eval test
    assert planned_reasons(trained, target) == {}
    # lora.yaml extends base.yaml: the run's jobs read the parent, so editing it reruns them.
    with edited(trained / "config/train/base.yaml"):
        reasons = planned_reasons(trained, target)
        assert {"sft_dataset", "train_sft", "merge_adapter", "eval_sft"} <= set(reasons), reasons
        assert "Updated input files: config/train/base.yaml" in reasons["sft_dataset"]
        assert "demo_tickets" not in reasons
        for rule, output in (("train_sft", checkpoint), ("eval_sft", target)):
            reasons = planned_reasons(trained, output, allowed=(rule,))
            assert set(reasons) == {rule}, reasons
            assert "Updated input files: config/train/base.yaml" in reasons[rule], reasons
    with edited(trained / "config/missions.yaml"):
        reasons = planned_reasons(trained, target)
        assert "Updated input files: config/missions.yaml" in reasons.get("demo_tickets", ""), reasons
        for rule, output in (("sft_dataset", data), ("eval_sft", target)):
            reasons = planned_reasons(trained, output, allowed=(rule,))
            assert set(reasons) == {rule}, reasons
            assert "Updated input files: config/missions.yaml" in reasons[rule], reasons
    assert planned_reasons(trained, target) == {}  # the same content again: nothing to do
