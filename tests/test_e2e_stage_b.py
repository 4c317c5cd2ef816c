"""End to end on the tiny model: Stage-B eval and a one-epoch train through Snakemake, hf backend.

The model is trained here by the pipeline's own rules on verdict rows only (text), about 70 steps: all this
machine affords, so it often breaks the two-line format and those tickets take the failure path. The Stage-A
input, `results/<mission>_stage_a.jsonl`, is written by the
test from the demo's ground-truth summaries (`results/data/demo/all_samples.jsonl`): that file is
Stage-B's input contract, and running Stage-A as well would add minutes without testing Stage-B further.
Snakemake then runs with `--allowed-rules` for the two Stage-B rules, so the written file stands as input;
both run as two gloo ranks under torchrun (`stage_b.cpu_ranks: 2`), so the prompts are split between them.
The train run runs once more (`--forcerun`), to compare the files of the two, together with a new train
run that continues from its guidance (`stage_b.train_guidance`). The eval runs once more with
`backend: openai` against `swift deploy` serving the same checkpoint.
One label is flipped, so that a valid verdict of the model gives the train run a mismatch to reflect on.
What the tiny model answers is its business; the tests check the contracts that hold whatever it answers
(the reflection paths themselves are covered with a scripted backend in test_stage_b_engine.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from support.ground_truth import ground_truth_records
from support.swift_deploy import swift_deploy
from workflow_env import snakemake, trained_workflow

from vlqc.jsonl import read_json, read_jsonl, write_jsonl
from vlqc.stage_b.engine import JSONL_SCHEMAS, OUTPUT_FILES

pytestmark = pytest.mark.e2e

MISSION = "挡风板安装检查"
RUN = f"results/stage_b/{MISSION}/eval/e2e"
TRAIN_RUN = f"results/stage_b/{MISSION}/train/e2e"
MORE_RUN = f"results/stage_b/{MISSION}/train/e2e_more"  # continues from TRAIN_RUN's guidance
OPENAI_RUN = f"results/stage_b/{MISSION}/eval/e2e_openai"
SERVED_NAME = "vlqc-e2e"
OVERLAY = f"""
demo: {{missions: [{MISSION}], tickets_per_mission: 4, seed: 5}}
train: {{run: stageb, runs: {{stageb: config/train/e2e_stageb.yaml}}}}
stage_b:
  train_guidance: {{e2e_more: 'results/stage_b/{{mission}}/train/e2e/guidance.json'}}
  cpu_ranks: 2
  logging_steps: 4
  train_grid: [{{temperature: 0.3, max_new_tokens: 64}}, {{temperature: 0.7, max_new_tokens: 64}}]
  eval_grid: [{{temperature: 0.1, max_new_tokens: 64}}]
  reflection: {{format_retries: 1, max_calls_per_epoch: 6, max_new_tokens: 64}}
  gate: {{patience: 2}}
"""
# Text rows leave the vision tower without gradients, which DDP refuses unless it is frozen.
TRAIN = """extends: demo.yaml
tuner: {freeze_vit: true, freeze_aligner: true}
data:
  modes: {dense: 0.0, summary: 0.0, verdict: 1.0}
  recombined_verdicts: 0
training: {epochs: 8, per_device_train_batch_size: 1, save_steps: 1000}
"""


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    workdir = trained_workflow(tmp_path_factory.mktemp("stage_b"), OVERLAY, {"stageb": TRAIN})
    samples = read_jsonl(workdir / "results/data/demo/all_samples.jsonl", schema="sample")
    records = ground_truth_records(samples, MISSION)
    records[0]["label"] = "pass" if records[0]["label"] == "fail" else "fail"  # a label the model should dispute
    write_jsonl(workdir / f"results/{MISSION}_stage_a.jsonl", records, schema="stage_a_group")
    targets = [f"{RUN}/verdicts.jsonl", f"{TRAIN_RUN}/verdicts.jsonl"]
    snakemake(workdir, "--configfile", "e2e.yaml", "--allowed-rules", "stage_b_eval", "stage_b_train", "--", *targets)
    first_train = run_files(workdir / TRAIN_RUN)
    first_written = (workdir / TRAIN_RUN / "verdicts.jsonl").stat().st_mtime_ns
    # The same train target again, from an emptied folder, and a new run from the guidance it learned.
    more = ("--configfile", "e2e.yaml", "--allowed-rules", "stage_b_train")
    plan = snakemake(workdir, *more, "-n", "--", f"{MORE_RUN}/verdicts.jsonl").stdout
    snakemake(
        workdir, *more, "--forcerun", f"{TRAIN_RUN}/verdicts.jsonl", "--", *targets[1:], f"{MORE_RUN}/verdicts.jsonl"
    )
    # The same eval through the openai backend, against swift deploy serving the same checkpoint.
    with swift_deploy(workdir / "results/train/sft/stageb/merged", workdir, SERVED_NAME) as server:
        (workdir / "openai.yaml").write_text(
            f"stage_b: {{backend: openai, openai: {{base_url: '{server.base_url}', model: {SERVED_NAME}}}}}\n",
            encoding="utf-8",
        )
        snakemake(
            workdir,
            "--configfile",
            "e2e.yaml",
            "openai.yaml",
            "--allowed-rules",
            "stage_b_eval",
            "--",
            f"{OPENAI_RUN}/verdicts.jsonl",
        )
        served = server.completed_requests()
    tickets = {f"{r['group_id']}::{r['label']}" for r in records}
    rerun = (workdir / TRAIN_RUN / "verdicts.jsonl").stat().st_mtime_ns != first_written
    return Workflow(workdir, tickets, served, first_train, rerun, plan)


class Workflow(NamedTuple):
    workdir: Path
    tickets: set[str]
    served: int  # requests swift deploy answered
    first_train: dict[str, Any]  # run_files of TRAIN_RUN's first run
    train_rerun: bool  # TRAIN_RUN's files were written again
    more_plan: str  # the dry run of MORE_RUN once TRAIN_RUN was built


def run_files(run_dir: Path) -> dict[str, Any]:
    """Every file of a run folder by its path in it; metrics rows without their timing fields, and of the run
    manifest neither run_metadata.json (its time) nor runtime_env.json (torchrun's port) but their keys."""
    files = {str(path.relative_to(run_dir)): path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    for name in ("run_metadata.json", "runtime_env.json"):
        files[name] = sorted(read_json(run_dir / name))
    timing = ("elapsed_seconds", "groups_per_second", "eta_seconds")
    metrics = read_jsonl(run_dir / "metrics.jsonl", schema=JSONL_SCHEMAS["metrics.jsonl"])
    files["metrics.jsonl"] = [{k: v for k, v in row.items() if k not in timing} for row in metrics]
    return files


def rows(workdir: Path, run: str, name: str) -> list[dict]:
    return list(read_jsonl(workdir / run / name, schema=JSONL_SCHEMAS[name]))


def job_log(workdir: Path, run: str) -> str:
    return (workdir / f"{run.replace('results/', 'results/logs/', 1)}.log").read_text(encoding="utf-8")


def test_the_same_train_target_gives_the_same_files(workflow):
    again = run_files(workflow.workdir / TRAIN_RUN)
    assert workflow.train_rerun and "verdicts.jsonl" in again and "guidance.json" in again
    assert again == workflow.first_train


def test_a_continued_train_run_starts_from_its_parents_guidance(workflow):
    workdir = workflow.workdir
    # The dry run: the parent's guidance is the new run's input, and the parent is up to date.
    (planned,) = re.findall(r"^rule stage_b_train:\n    input: (.*)$", workflow.more_plan, flags=re.M)
    assert f"{TRAIN_RUN}/guidance.json" in planned.split(", ")
    assert f"output: {MORE_RUN}/verdicts.jsonl" in workflow.more_plan
    parent = read_json(workdir / TRAIN_RUN / "guidance.json")[MISSION]
    assert f"guidance from {TRAIN_RUN}/guidance.json (step {parent['step']})" in job_log(workdir, MORE_RUN)
    # What it started from: its first snapshot when it saved over the copy, else the copy itself.
    snapshots = sorted((workdir / MORE_RUN / "snapshots").glob("guidance-*.json"), key=lambda p: int(p.stem[9:]))
    start = snapshots[0] if snapshots else workdir / MORE_RUN / "guidance.json"
    assert read_json(start)[MISSION] == parent


@pytest.mark.parametrize("run", [RUN, TRAIN_RUN, MORE_RUN, OPENAI_RUN])
def test_every_ticket_ends_in_verdicts_or_failure_malformed(workflow, run):
    workdir, tickets = workflow.workdir, workflow.tickets
    verdicts = {row["ticket_key"] for row in rows(workdir, run, "verdicts.jsonl")}
    failed = {row["ticket_key"] for row in rows(workdir, run, "failure_malformed.jsonl") if "label" in row}
    assert not verdicts & failed
    assert verdicts | failed == tickets


@pytest.mark.parametrize(("run", "candidates"), [(RUN, 1), (TRAIN_RUN, 2), (OPENAI_RUN, 1)])
def test_a_ticket_without_a_valid_vote_keeps_every_answer_of_the_model(workflow, run, candidates):
    workdir = workflow.workdir
    for failure in rows(workdir, run, "failure_malformed.jsonl"):
        if failure["code"] in ("format_error", "no_valid_candidates"):
            assert len(failure["raw"]) == candidates and all(failure["raw"]), failure
        else:
            assert failure["code"].startswith("reflection_"), failure  # the prompts fit; the backend answered


@pytest.mark.parametrize("run", [RUN, TRAIN_RUN, MORE_RUN, OPENAI_RUN])
def test_every_artifact_is_written_and_valid(workflow, run):
    workdir, tickets = workflow.workdir, workflow.tickets
    for name in OUTPUT_FILES:
        assert (workdir / run / name).is_file(), name
    report = rows(workdir, run, "group_report.jsonl")
    assert {row["ticket_key"] for row in report} == tickets
    metrics = rows(workdir, run, "metrics.jsonl")
    assert metrics[-1]["event"] == "epoch_end" and metrics[-1]["include_manual_review"]["n"] == len(tickets)
    read_json(workdir / run / "need_review.json", schema="stage_b_need_review")
    read_json(workdir / run / "guidance.json", schema="stage_b_guidance")
    read_json(workdir / run / "hypotheses.json", schema="stage_b_hypotheses")
    # The run manifest: what the run read, and the model it ran (Stage-A's merged serving model).
    metadata = read_json(workdir / run / "run_metadata.json", schema="run_metadata")
    assert metadata["job"] == "stage_b" and metadata["checkpoint"]["kind"] == "model"
    assert read_json(workdir / run / "resolved_config.json")["mission"] == MISSION
    log = job_log(workdir, run)
    assert "FALSE PASS (human fail, model pass)" in log


@pytest.mark.parametrize("run", [RUN, TRAIN_RUN])
def test_both_cpu_ranks_answer_prompts(workflow, run):
    workdir = workflow.workdir
    log = job_log(workdir, run)
    served = re.search(r"rank 1 of 2: answered (\d+) prompts in (\d+) calls", log)
    assert served and int(served.group(1)) > 0, log[-2000:]


def test_openai_eval_sends_every_prompt_to_the_server(workflow):
    workdir, tickets, served = workflow.workdir, workflow.tickets, workflow.served
    too_long = {
        row["ticket_key"]
        for row in rows(workdir, OPENAI_RUN, "failure_malformed.jsonl")
        if row["code"] == "prompt_too_long"
    }
    assert served == len(tickets - too_long) > 0
    assert not [row for row in rows(workdir, OPENAI_RUN, "trajectories.jsonl") if "detail" in row]  # no BackendError


def test_eval_samples_the_eval_grid_once_and_keeps_the_seed_guidance(workflow):
    workdir, tickets = workflow.workdir, workflow.tickets
    trajectories = rows(workdir, RUN, "trajectories.jsonl")
    too_long = {
        row["ticket_key"] for row in rows(workdir, RUN, "failure_malformed.jsonl") if row["code"] == "prompt_too_long"
    }
    assert {row["sampler"]["temperature"] for row in trajectories} == {0.1}
    assert len(trajectories) == len(tickets - too_long)  # one candidate per ticket sent
    assert not rows(workdir, RUN, "reflection.jsonl")
    seed = json.loads((workdir / f"config/stage_b/{MISSION}.json").read_text(encoding="utf-8"))
    assert read_json(workdir / RUN / "guidance.json")[MISSION]["experiences"] == seed[MISSION]["experiences"]


def test_train_reflects_exactly_when_a_ticket_asks_for_it(workflow):
    workdir = workflow.workdir
    selections = rows(workdir, TRAIN_RUN, "selections.jsonl")
    assert {row["sampler"]["temperature"] for row in rows(workdir, TRAIN_RUN, "trajectories.jsonl")} == {0.3, 0.7}
    wanting = [s for s in selections if s["failure"] is None and (s["verdict"] != s["label"] or s["low_agreement"])]
    cycles = [row for row in rows(workdir, TRAIN_RUN, "reflection.jsonl") if row["event"] == "cycle"]
    assert bool(cycles) == bool(wanting)
    # The tiny model was never taught the reflection format: a pass it could not answer is on record.
    failures = [
        row for row in rows(workdir, TRAIN_RUN, "failure_malformed.jsonl") if row["code"].startswith("reflection")
    ]
    for cycle in cycles:
        if cycle["status"] in ("decision_failed", "ops_failed"):
            assert any(f["reflection_id"] == cycle["reflection_id"] for f in failures)
    for failure in failures:
        assert failure["code"] != "reflection_format_error" or len(failure["raw"]) == 2  # 1 + format_retries
