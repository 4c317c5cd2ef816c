"""End to end on the tiny model: `results/<mission>_stage_a.jsonl` through Snakemake with 2 gloo
ranks, in both sharding modes, with a corrupt photo, resumed after a kill, and in 2 shards (stage_a.shards).

The model is trained here by the pipeline's own rules (summary mode, a one-mission demo). A model
that small, trained for a minute, writes summaries that mostly do not parse, so which groups succeed
is the model's business: the tests check coverage, that the corrupt photo fails its own group with
`decode_error` and no other group for a load reason, and resume. Isolation with groups that do
succeed is tested with a scripted backend in test_stage_a_infer.py.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from workflow_env import BIN, snakemake, trained_workflow

from vlqc.jsonl import read_json, read_jsonl

pytestmark = pytest.mark.e2e

MISSION = "挡风板安装检查"
TARGET = f"results/{MISSION}_stage_a.jsonl"
FAILURES = f"results/{MISSION}_stage_a.failures.jsonl"
OVERLAY = f"""
demo: {{missions: [{MISSION}], tickets_per_mission: 4, seed: 5, datalist_fraction: 0.0}}
train: {{run: stagea, runs: {{stagea: config/train/e2e_stagea.yaml}}}}
stage_a: {{input_root: tickets, cpu_ranks: 2, batch_size: 4, max_new_tokens: 96}}
"""
TRAIN = """extends: demo.yaml
data:
  train: [{dataset: demo, split: train}, {dataset: demo, split: val}]
  val: []
  modes: {dense: 0.0, summary: 1.0, verdict: 0.0}
  recombined_verdicts: 0
training: {epochs: 8, save_steps: 1000}
"""
MODEL_FAILURES = {"unparseable_summary", "empty_summary"}


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    workdir = trained_workflow(tmp_path_factory.mktemp("stage_a"), OVERLAY, {"stagea": TRAIN})
    # Stage-A reads its own copy of the tickets, with one photo corrupted.
    shutil.copytree(workdir / "resources/demo/tickets", workdir / "tickets")
    corrupt = sorted((workdir / "tickets" / MISSION / "审核通过").glob("*/*.jpg"))[0]
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    return workdir, corrupt


def mode_overlay(workdir: Path, mode: str) -> str:
    (workdir / f"{mode}.yaml").write_text(f"stage_a: {{sharding_mode: {mode}}}\n", encoding="utf-8")
    return f"{mode}.yaml"


def outcome(workdir: Path) -> tuple[dict, dict]:
    records = {(r["group_id"], r["label"]): r for r in read_jsonl(workdir / TARGET, schema="stage_a_group")}
    failures = {(f["group_id"], f["label"]): f for f in read_jsonl(workdir / FAILURES, schema="stage_a_failure")}
    return records, failures


@pytest.fixture(scope="module")
def both_modes(workflow):
    workdir, corrupt = workflow
    results = {}
    for mode in ("per_group", "per_image"):
        snakemake(workdir, "--configfile", "e2e.yaml", mode_overlay(workdir, mode), "--", TARGET)
        results[mode] = outcome(workdir)
    return workdir, corrupt, results


def selection(workdir: Path) -> list[dict]:
    return list(read_jsonl(workdir / f"results/stage_a/{MISSION}/selection.jsonl", schema="stage_a_group_selection"))


def test_every_selected_group_is_written_or_failed_in_both_modes(both_modes):
    workdir, _, results = both_modes
    selected = {(g["group_id"], g["label"]) for g in selection(workdir)}
    assert len(selected) == 4
    for mode, (records, failures) in results.items():
        assert not set(records) & set(failures), mode
        assert set(records) | set(failures) == selected, mode


def test_records_follow_the_contract(both_modes):
    workdir, _, results = both_modes
    groups = {(g["group_id"], g["label"]): g for g in selection(workdir)}
    for records, _ in results.values():
        for key, record in records.items():
            assert record["mission"] == MISSION
            assert record["images"] == groups[key]["images"]  # discovery order
            assert list(record["per_image"]) == [f"image_{i}" for i in range(1, len(record["images"]) + 1)]
            assert record["stage_a_complete"] is True


def test_the_inference_job_writes_its_run_manifest(both_modes):
    workdir, _, _ = both_modes
    folder = workdir / f"results/stage_a/{MISSION}"
    metadata = read_json(folder / "run_metadata.json", schema="run_metadata")
    assert metadata["job"] == "stage_a" and metadata["world"] == 2 and metadata["copy_failures"] == []
    checkpoint = metadata["checkpoint"]
    assert checkpoint["path"] == "results/train/sft/stagea/merged" and checkpoint["kind"] == "model"
    resolved = read_json(folder / "resolved_config.json")
    assert resolved["mission"] == MISSION and resolved["stage_a"]["sharding_mode"] == "per_image"
    # Snakemake marks a directory output with a hidden timestamp file.
    assert [p.name for p in (folder / "sources").glob("[!.]*")] == ["00-missions.yaml"]


def test_a_corrupt_photo_fails_only_its_group(both_modes):
    _, corrupt, results = both_modes
    for mode, (_, failures) in results.items():
        broken = [f for f in failures.values() if corrupt.name in f["details"]]
        assert len(broken) == 1 and broken[0]["reason"] == "decode_error", mode
        assert broken[0]["rank"] in (0, 1)
        others = [f for f in failures.values() if corrupt.name not in f["details"]]
        assert all(f["reason"] in MODEL_FAILURES for f in others), mode


def test_verify_reports_each_photo(both_modes):
    workdir, corrupt, _ = both_modes
    rows = list(read_jsonl(workdir / f"results/stage_a/{MISSION}/verify.jsonl", schema="stage_a_verify"))
    assert len(rows) == sum(len(g["images"]) for g in selection(workdir))
    bad = [r for r in rows if not r["ok"]]
    assert [(r["image_name"], r["error"]["code"]) for r in bad] == [(corrupt.name, "decode_error")]
    assert all(r["match"] for r in rows if r["ok"])


def test_rank_files_are_temporary_and_the_merge_is_logged(both_modes):
    workdir, _, _ = both_modes
    assert not list((workdir / f"results/stage_a/{MISSION}").glob("*.rank*.jsonl"))
    assert not (workdir / f"results/stage_a/{MISSION}/resume").exists()
    log = (workdir / f"results/logs/stage_a/{MISSION}/merge.log").read_text(encoding="utf-8")
    assert "selected 4, written" in log
    # The merge keeps what the ranks did in stats.json; the ranks' own stats files are temporary too.
    assert not list((workdir / f"results/stage_a/{MISSION}").glob("rank*.stats.json"))
    stats = read_json(workdir / f"results/stage_a/{MISSION}/stats.json", schema="stage_a_stats")
    assert stats["selected"] == 4 and stats["written"] + stats["failed"] == 4 and len(stats["ranks"]) == 2
    assert stats["images"] == sum(len(g["images"]) for g in selection(workdir)) and stats["generate_s"] > 0


def test_a_killed_run_resumes_where_it_stopped(both_modes):
    workdir, _, _ = both_modes
    overlay = mode_overlay(workdir, "per_group")
    shutil.rmtree(workdir / f"results/stage_a/{MISSION}")  # start inference over, with no resume entries
    args = [str(BIN / "snakemake"), "--cores", "2", "--configfile", "e2e.yaml", overlay, "--", TARGET]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.Popen(
        args, cwd=workdir, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    resume = workdir / f"results/stage_a/{MISSION}/resume"
    # Kill as soon as the first batch is on disk, however long the machine takes to get there.
    while not any(p.stat().st_size for p in resume.glob("rank*.jsonl")) and run.poll() is None:
        time.sleep(0.5)
    assert run.poll() is None, "the job ended before it could be killed mid-way"
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    finished = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in resume.glob("rank*.jsonl"))
    assert finished > 0

    snakemake(workdir, "--unlock", "--configfile", "e2e.yaml", overlay)
    snakemake(workdir, "--configfile", "e2e.yaml", overlay, "--rerun-incomplete", "--", TARGET)
    log = (workdir / f"results/logs/stage_a/{MISSION}/infer.log").read_text(encoding="utf-8")
    resumed = sum(int(part.split(",")[0]) for part in log.split('"resumed": ')[1:])
    assert resumed >= finished
    records, failures = outcome(workdir)
    assert len(records) + len(failures) == 4


# --- shards (docs/stage-a.md#shards) -------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(both_modes):
    """per_image in 2 shards of 1 rank, which deal as the one job of 2 ranks did: shard 0 alone first (as if
    shard 1 had failed), then the mission. One core, so that each rank computes with one thread as before."""
    workdir, _, results = both_modes
    (workdir / "shards.yaml").write_text("stage_a: {sharding_mode: per_image, shards: 2, cpu_ranks: 1}\n")
    args = ["--cores", "1", "--configfile", "e2e.yaml", "shards.yaml", "--"]
    shard0 = f"results/stage_a/{MISSION}/shard0"
    snakemake(workdir, *args, f"{shard0}/{MISSION}_stage_a.images.rank0.jsonl", f"{shard0}/rank0.stats.json")
    logs = workdir / f"results/logs/stage_a/{MISSION}"
    shard0_log = (logs / "infer.shard0.log").stat().st_mtime_ns
    assert not (logs / "infer.shard1.log").exists()
    done = snakemake(workdir, *args, TARGET)
    return workdir, results["per_image"], shard0_log, done.stdout + done.stderr


def test_shards_give_the_records_and_failures_of_one_job_of_as_many_ranks(sharded):
    workdir, (records, failures), _, _ = sharded
    sharded_records, sharded_failures = outcome(workdir)
    assert sharded_records == records
    # The same answers (quoted in details), named by rank: rank 0 of shard s is rank s of the one job.
    for failure in sharded_failures.values():
        failure["details"] = re.sub(r"shard(\d)/(\S+)\.rank0\.jsonl", r"\2.rank\1.jsonl", failure["details"])
    assert sharded_failures == failures
    stats = read_json(workdir / f"results/stage_a/{MISSION}/stats.json", schema="stage_a_stats")
    assert [(r["rank"], r["world"]) for r in stats["ranks"]] == [(0, 2), (1, 2)] and stats["selected"] == 4


def test_a_rerun_after_a_missing_shard_runs_only_that_shard(sharded):
    workdir, _, shard0_log, output = sharded
    logs = workdir / f"results/logs/stage_a/{MISSION}"
    assert (logs / "infer.shard0.log").stat().st_mtime_ns == shard0_log
    assert re.search(r"^stage_a_infer\s+1$", output, flags=re.M) and "shard=1" in output and "shard=0" not in output


def test_each_shard_writes_its_manifest_and_its_files_are_temporary(sharded):
    workdir, _, _, _ = sharded
    folder = workdir / f"results/stage_a/{MISSION}"
    for shard in range(2):
        metadata = read_json(folder / f"shard{shard}/run_metadata.json", schema="run_metadata")
        assert (metadata["shard"], metadata["world"]) == (shard, 1)
        assert read_json(folder / f"shard{shard}/resolved_config.json")["stage_a"]["shards"] == 2
    assert not list(folder.glob("shard*/*rank*.json*")) and not (folder / "resume").exists()
