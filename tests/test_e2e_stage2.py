"""End to end on the tiny model: SFT → Stage-2 AB (docs/stage2.md). A Stage-2 run `ab` (config/train/stage2_demo.yaml:
4 steps, b_ratio 0.5, batch 2, every B step dumped; rollouts of 16 tokens here) starts from the merged `lora` run of
conftest's shared `trained` workflow, through the pipeline's own rules; its merged model then serves one Stage-A
group through scripts/stage_a_infer.py as the rule runs it.

The `lora` run trained 3 steps writes no dense answer, so its rollouts are expected to fall back to channel A (with
their reason counted) rather than be built: the test checks the accounting whatever the rollouts hold; how a
rollout becomes a sequence is tested on fixed rollouts in tests/test_stage2_sequence.py.
"""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import pytest
from conftest import REPO
from safetensors.torch import load_file
from support.swift_deploy import Server, swift_deploy
from test_stage2_config import jobs
from workflow_env import snakemake

from vlqc.jsonl import read_json, read_jsonl
from vlqc.stage_a.discover import discover, sample_groups
from vlqc.stage_a.jobs import write_selection
from vlqc.train.stage2.sequence import FALLBACK_REASONS

pytestmark = pytest.mark.e2e

RUN = "results/train/stage2/ab"
SFT = "results/train/sft/lora"
SERVED = "results/train/stage2/srv"  # run ab with server rollouts
# Given after e2e.yaml: Snakemake merges config files key by key, so train.runs and train.run stay e2e.yaml's.
# The other modules build with e2e.yaml alone; the Stage-2 jobs only add results/train/stage2/ab/ (and logs), and
# the overlay reruns none of the shared jobs (the plan test).
CONFIGS = ("--configfile", "e2e.yaml", "stage2.yaml")
OVERLAY = "train: {stage2_runs: {ab: config/train/e2e_stage2.yaml}}\n"
MAX_NEW = 16  # rollout tokens: the rollouts are not expected to parse (above), so short ones show as much
# No val loss (the Stage-2 trainer leaves evaluation to ms-swift, as SFT): half a minute saved on 2 cores.
TRAIN = f"""extends: stage2_demo.yaml
init_from: lora
data: {{val: []}}
stage2_ab: {{rollout: {{max_new_tokens: {MAX_NEW}}}}}
"""
STEPS, BATCH = 4, 2  # stage2_demo.yaml: max_steps, per_device_train_batch_size (one rank, no accumulation)
B_STEPS = [2, 4]  # 1-based: b_ratio 0.5 makes 0-based steps 1 and 3 channel B
B_ONLY = ("time/rollout_generate_s", "time/rollout_build_s", "rollout/gen_tokens_per_s", "rollout/gen_tokens_mean")
REASONS = (*FALLBACK_REASONS, "not_dense")  # the builder's, and the trainer's for a target it cannot parse
MISSION = "挡风板安装检查"
MODEL_FAILURES = {"unparseable_summary", "empty_summary"}  # Stage-A's reasons for an answer that is no summary


@pytest.fixture(scope="module")
def stage2(trained) -> tuple[Path, dict]:
    """The trained workflow with the Stage-2 run `ab` merged, and the plan Snakemake made of it beforehand."""
    (trained / "config/train/e2e_stage2.yaml").write_text(TRAIN, encoding="utf-8")
    (trained / "stage2.yaml").write_text(OVERLAY, encoding="utf-8")
    plan = jobs(snakemake(trained, *CONFIGS, "-n", "--", f"{RUN}/merged").stdout)
    snakemake(trained, *CONFIGS, "--", f"{RUN}/merged")
    return trained, plan


def training_rows(workdir: Path) -> list[dict]:
    """The run's per-step log rows (logging_steps 1), in step order."""
    rows = [json.loads(line) for line in (workdir / RUN / "logging.jsonl").read_text(encoding="utf-8").splitlines()]
    return [row for row in rows if "loss" in row]


def test_the_stage2_run_trains_on_the_sft_runs_merged_model_without_retraining_it(stage2):
    _, plan = stage2
    assert sorted(rule for rule, _ in plan) == ["merge_adapter", "sft_dataset", "train_stage2"], plan
    train = plan["train_stage2", f"{RUN}/checkpoint"]
    assert train["input"].split(", ")[:2] == [f"{SFT}/merged", f"{RUN}/data"]
    assert plan["merge_adapter", f"{RUN}/merged"]["input"] == f"{RUN}/checkpoint, {SFT}/merged"


def test_both_channels_run_on_schedule_with_finite_losses(stage2):
    workdir, _ = stage2
    rows = training_rows(workdir)
    assert [row["global_step/max_steps"] for row in rows] == [f"{s}/{STEPS}" for s in range(1, STEPS + 1)]
    channel_b = [step for step, row in enumerate(rows, start=1) if row["stage2_ab/channel_b"] == 1.0]
    assert channel_b == B_STEPS
    # ms-swift rounds logged floats to 8 places.
    assert [row["stage2_ab/b_ratio_realized"] for row in rows] == pytest.approx([0.0, 0.5, 1 / 3, 0.5], abs=1e-8)
    for row in rows:
        assert math.isfinite(row["loss"]) and row["loss"] > 0, row
        assert math.isfinite(row["grad_norm"]), row
    logged = (workdir / RUN / "logging.jsonl").read_text(encoding="utf-8").splitlines()
    summary = next(row for row in map(json.loads, logged) if "train_loss" in row)
    assert math.isfinite(summary["train_loss"])


def test_rollout_metrics_are_logged_on_b_steps_only(stage2):
    workdir, _ = stage2
    for step, row in enumerate(training_rows(workdir), start=1):
        rollout_keys = {k for k in row if k.startswith(("rollout/", "time/rollout"))}
        if step in B_STEPS:
            assert set(B_ONLY) | {"rollout/fallback_rate"} <= rollout_keys, (step, row)
            assert row["time/rollout_generate_s"] > 0 and row["rollout/gen_tokens_per_s"] > 0
            assert 1 <= row["rollout/gen_tokens_mean"] <= MAX_NEW
        else:
            # A steps carry no rollout metric, not even a zero (the dump writer's counts are stage2_ab/dumps_*).
            assert rollout_keys == set(), (step, rollout_keys)


def test_every_b_row_is_built_or_falls_back_under_a_reason_and_is_dumped(stage2):
    workdir, _ = stage2
    rows = {step: row for step, row in enumerate(training_rows(workdir), start=1) if step in B_STEPS}
    dumps = list(read_jsonl(workdir / RUN / "rollouts/rollouts.rank0.jsonl", schema="stage2_rollout_dump"))
    assert [d["step"] for d in dumps] == [step - 1 for step in B_STEPS for _ in range(BATCH)]
    # Named by the train row they rolled out (found through its `channel`): its sample and epoch.
    named = {
        f"{row['meta']['source']}@{row['meta']['epoch']}" for row in read_jsonl(workdir / RUN / "data/train.jsonl")
    }
    assert all(d["sample_id"] in named for d in dumps), [d["sample_id"] for d in dumps]
    assert [p.name for p in (workdir / RUN / "rollouts").glob("[!.]*")] == ["rollouts.rank0.jsonl"]
    for step, row in rows.items():
        prefix = "rollout/fallbacks/"
        fallbacks = {k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix)}
        rate = row["rollout/fallback_rate"]
        assert set(fallbacks) <= set(REASONS), fallbacks
        step_dumps = [d for d in dumps if d["step"] == step - 1]
        built = [d for d in step_dumps if d["matches"] is not None]  # a fall-back is dumped before matching
        assert sum(fallbacks.values()) + len(built) == BATCH, (step, fallbacks, len(built))
        assert rate == sum(fallbacks.values()) / BATCH
        # Parse and match statistics exist only where a sequence was built (and had objects to score).
        assert ("rollout/parse_truncated_rate" in row) == bool(built), row
        for dump in step_dumps:
            assert dump["gt_objects"], "a dense row has ground truth"
            assert 1 <= dump["rollout_tokens"] <= MAX_NEW
    # The counts reach the log as they were at each step; all are written once the trainer closed the writer.
    assert rows[B_STEPS[-1]]["stage2_ab/dumps_dropped_full"] == rows[B_STEPS[-1]]["stage2_ab/dumps_failed"] == 0


def test_the_run_records_its_origin_and_settings(stage2):
    workdir, _ = stage2
    out = workdir / RUN
    metadata = read_json(out / "run_metadata.json", schema="run_metadata")
    assert metadata["init_from"] == "lora" and metadata["base_model"] == f"{SFT}/merged"
    settings = json.loads(metadata["stage2_env"]["VLQC_STAGE2_AB"])
    assert (settings["b_ratio"], settings["rollout"]["max_new_tokens"], settings["dump"]["every"]) == (0.5, MAX_NEW, 1)
    assert metadata["length_gate"]["max_new_tokens"] == MAX_NEW
    resolved = read_json(out / "resolved_config.json")
    assert resolved["init_from"] == "lora"
    assert settings == {
        **resolved["stage2_ab"],
        "dump_dir": str((out / "rollouts").resolve()),
        "rows": str((out / "swift/data/stage2_train.jsonl").resolve()),  # the numbered rows, gone with swift/
        "image_root": str((out / "data").resolve()),
        "base_model": str((workdir / SFT / "merged").resolve()),
    }
    sources = sorted(p.name for p in (out / "sources").glob("*.yaml"))
    assert sources[0].endswith("base.yaml") and sources[-1].endswith("e2e_stage2.yaml")
    assert any(name.endswith("stage2_demo.yaml") for name in sources)
    assert not (out / "swift").exists(), "the ms-swift work folder is temporary"


def test_checkpoints_have_the_layout_of_an_sft_run(stage2):
    workdir, _ = stage2
    out, sft = workdir / RUN, workdir / SFT

    def names(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    assert names(out / "steps") == [f"step_{STEPS}"]  # save_steps 500: the last step only
    assert json.loads((out / f"steps/step_{STEPS}/trainer_state.json").read_text())["global_step"] == STEPS
    assert names(out / "checkpoint") == names(sft / "checkpoint") == names(out / f"steps/step_{STEPS}")
    adapter = "adapter_model.safetensors"
    assert (out / "checkpoint" / adapter).samefile(out / f"steps/step_{STEPS}" / adapter), "linked, not copied"
    assert names(out / "merged") == names(sft / "merged")
    # Its own adapter, merged into the SFT run's weights: the merged model is the SFT one, changed.
    ours, theirs = load_file(out / "merged/model.safetensors"), load_file(sft / "merged/model.safetensors")
    assert ours.keys() == theirs.keys()
    assert any(not ours[k].equal(theirs[k]) for k in ours)


def test_the_merged_stage2_model_serves_stage_a(stage2, tmp_path, monkeypatch):
    """Through scripts/stage_a_infer.py (one rank, one group), the model loading path of rule stage_a_infer. Not the
    rule itself: in the shared workflow it would write results/<mission>_stage_a.jsonl, which test_e2e_report.py
    writes as its own input; that train.run: ab makes the rule read this run's merged model is planned in
    tests/test_stage2_config.py."""
    workdir, _ = stage2
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    groups = sample_groups(discover(workdir / "resources/demo/tickets", MISSION), 1, 0, seed=0)
    selection = tmp_path / "selection.jsonl"
    write_selection(selection, groups)
    main = runpy.run_path(str(REPO / "scripts" / "stage_a_infer.py"))["main"]
    argv = [
        *("--selection", str(selection), "--mission", MISSION, "--missions", str(workdir / "config/missions.yaml")),
        *("--checkpoint", str(workdir / RUN / "merged"), "--out", str(tmp_path / "ab.rank{rank}.jsonl")),
        *("--resume-dir", str(tmp_path / "resume"), "--manifest-dir", str(tmp_path / "manifest")),
        *("--settings", json.dumps({"max_new_tokens": 8, "batch_size": 4})),
    ]
    assert main(argv) == 0
    rows = list(read_jsonl(tmp_path / "ab.rank0.jsonl", schema="stage_a_image_row"))
    assert len(groups) == 1 and len(rows) == len(groups[0].images) >= 1
    # Every photo got an answer; that a model trained 3 + 4 steps writes no parseable summary is its business.
    assert all(row["ok"] or row["error"]["code"] in MODEL_FAILURES for row in rows), rows
    identity = read_json(tmp_path / "manifest/run_metadata.json", schema="run_metadata")["checkpoint"]
    assert identity["kind"] == "model" and Path(identity["path"]).resolve() == (workdir / RUN / "merged").resolve()


# --- the same run with its rollouts on a rollout server ------------------------------------------------------


@pytest.fixture(scope="module")
def served(stage2, tmp_path_factory) -> tuple[Path, Server]:
    """Run `srv`: run `ab`'s config with `rollout.backend: server`, on a rollout server serving the SFT run's merged
    model (the Stage-2 run's base, as the learner starts from it)."""
    workdir, _ = stage2
    with swift_deploy(
        workdir / SFT / "merged", tmp_path_factory.mktemp("rollout"), module="vlqc.train.stage2.rollout_server"
    ) as server:
        url = server.base_url.removesuffix("/v1")
        config = f"extends: e2e_stage2.yaml\nstage2_ab: {{rollout: {{backend: server, server: {{url: '{url}'}}}}}}\n"
        (workdir / "config/train/e2e_stage2_server.yaml").write_text(config, encoding="utf-8")
        overlay = "train: {stage2_runs: {srv: config/train/e2e_stage2_server.yaml}}\n"
        (workdir / "stage2_server.yaml").write_text(overlay, encoding="utf-8")
        snakemake(workdir, "--configfile", "e2e.yaml", "stage2_server.yaml", "--", f"{SERVED}/checkpoint")
        yield workdir, server


def test_server_rollouts_train_exactly_as_in_process_ones(served):
    """Same weights, same greedy rollouts, same sequences: the losses and gradients of every step are equal."""
    workdir, server = served
    ours = [json.loads(line) for line in (workdir / SERVED / "logging.jsonl").read_text(encoding="utf-8").splitlines()]
    ours = [row for row in ours if "loss" in row]
    theirs = training_rows(workdir)
    assert [(r["loss"], r["grad_norm"]) for r in ours] == [(r["loss"], r["grad_norm"]) for r in theirs]
    dumps = {run: list(read_jsonl(workdir / run / "rollouts/rollouts.rank0.jsonl")) for run in (RUN, SERVED)}
    fields = ("step", "sample_id", "rollout", "rollout_tokens", "matches")
    assert [[d[f] for f in fields] for d in dumps[SERVED]] == [[d[f] for f in fields] for d in dumps[RUN]]
    # The adapter went over before each B step, then the step's rows.
    for step, row in enumerate(ours, start=1):
        assert ("time/rollout_sync_s" in row) == (step in B_STEPS), row
    log = server.log_text()
    assert log.count('"POST /update_adapter/ HTTP/1.1" 200') == log.count('"POST /infer/ HTTP/1.1" 200') == len(B_STEPS)
