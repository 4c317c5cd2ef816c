"""The workflow on a real one-node SLURM cluster through snakemake-executor-plugin-slurm (docs/cluster.md).

tests/support/slurm_cluster.py starts slurmctld and slurmd on this machine (installing slurm-wlm and munge when
missing). The demo data conversion and Stage-A of one demo mission (2 CPU ranks, the tiny base model, untrained:
its greedy summaries mostly fail to parse, which is the model's business) run once locally and once through
`--workflow-profile profiles/slurm`. The cluster runs no accounting daemon, so the plugin follows its jobs with
its `squeue` status command, and the test reads what Slurm saw with `squeue --states=all` (MinJobAge keeps
finished jobs listed). Then one Stage-A job is cancelled with `scancel` mid-run, and a rerun finishes the mission
from its resume entries with no group lost.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from support.slurm_cluster import one_node_cluster
from workflow_env import BIN, copy_workflow, snakemake

from vlqc.jsonl import read_jsonl

pytestmark = pytest.mark.e2e

MISSION = "挡风板安装检查"
PARTITION = "vlqc"
STAGE_A = f"results/{MISSION}_stage_a.jsonl"
FAILURES = f"results/{MISSION}_stage_a.failures.jsonl"
CONVERTED = "results/data/demo/all_samples.jsonl"
# Stage-A runs the tiny base model as built (no training: the test is about where jobs run), on small images.
OVERLAY = f"""
demo: {{missions: [{MISSION}], tickets_per_mission: 4, seed: 5, datalist_fraction: 0.0}}
stage_a: {{checkpoint: results/train/base/tiny, cpu_ranks: 2, batch_size: 2, max_new_tokens: 12, max_pixels: 50176}}
cluster:
  partition: {PARTITION}
  data: {{mem_mb: 1000, runtime: 10}}
  model: {{cpus: 1, mem_mb: 4000, runtime: 20}}
"""
# The jobs of the targets, each one Slurm job.
RULES = {
    "demo_tickets",
    "convert_annotations",
    "base_model",
    "stage_a_select",
    "stage_a_verify",
    "stage_a_infer",
    "stage_a_merge",
}


def cluster_args() -> list[str]:
    # Status by squeue (no accounting here); the first status check after 1 s, not the plugin's 40.
    return [
        "--workflow-profile",
        "profiles/slurm",
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--configfile",
        "e2e.yaml",
    ]


def cluster_snakemake(workdir: Path, env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "snakemake"), *cluster_args(), *args], cwd=workdir, env=env, capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def outcome(workdir: Path) -> tuple[dict, dict]:
    records = {(r["group_id"], r["label"]): r for r in read_jsonl(workdir / STAGE_A, schema="stage_a_group")}
    failures = {(f["group_id"], f["label"]): f for f in read_jsonl(workdir / FAILURES, schema="stage_a_failure")}
    return records, failures


def slurm_jobs(env: dict) -> list[dict]:
    """Every job slurmctld still lists (finished ones too, for MinJobAge), with its rule from the plugin's comment."""
    listing = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%k|%T|%P|%C|%m"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    jobs = []
    for line in listing.stdout.splitlines():
        job_id, comment, state, partition, cpus, memory = line.strip().split("|")
        rule = comment.removeprefix("rule_").split("_wildcards_")[0]
        jobs.append({"id": job_id, "rule": rule, "state": state, "partition": partition, "cpus": cpus, "mem": memory})
    return jobs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # The plugin comes with requirements.lock; without it Snakemake has no `slurm` executor.
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError as exc:
        raise AssertionError("snakemake-executor-plugin-slurm is missing: pip install -r requirements.lock") from exc
    folder = tmp_path_factory.mktemp("slurm")
    with one_node_cluster(folder, partition=PARTITION) as env:
        yield {**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}"}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("local"))
    (workdir / "e2e.yaml").write_text(OVERLAY, encoding="utf-8")
    snakemake(workdir, "--configfile", "e2e.yaml", "--", CONVERTED, STAGE_A)
    return workdir


@pytest.fixture(scope="module")
def cluster_run(cluster, tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("cluster"))
    (workdir / "e2e.yaml").write_text(OVERLAY, encoding="utf-8")
    before = {job["id"] for job in slurm_jobs(cluster)}
    cluster_snakemake(workdir, cluster, "--", CONVERTED, STAGE_A)
    return workdir, [job for job in slurm_jobs(cluster) if job["id"] not in before]


def test_every_job_ran_as_a_slurm_job(cluster_run):
    _, jobs = cluster_run
    assert sorted(job["rule"] for job in jobs) == sorted(RULES)
    assert {job["state"] for job in jobs} == {"COMPLETED"}
    assert {job["partition"] for job in jobs} == {PARTITION}  # cluster.partition reached sbatch


def test_jobs_ask_for_the_configured_resources(cluster_run):
    _, jobs = cluster_run
    by_rule = {job["rule"]: job for job in jobs}
    # A whole-machine job asks for cluster.model.cpus (locally it has --cores 2), a data job for its threads
    # (convert.workers: 2).
    assert (by_rule["stage_a_infer"]["cpus"], by_rule["stage_a_infer"]["mem"]) == ("1", "4000M")
    assert (by_rule["convert_annotations"]["cpus"], by_rule["convert_annotations"]["mem"]) == ("2", "1000M")
    assert (by_rule["stage_a_merge"]["cpus"], by_rule["stage_a_merge"]["mem"]) == ("1", "1000M")


def test_outputs_equal_a_local_run(local_run, cluster_run):
    workdir, _ = cluster_run
    assert list(read_jsonl(workdir / CONVERTED)) == list(read_jsonl(local_run / CONVERTED))
    selection = f"results/stage_a/{MISSION}/selection.jsonl"
    assert (workdir / selection).read_bytes() == (local_run / selection).read_bytes()
    records, failures = outcome(workdir)
    assert len(records) + len(failures) == 4
    assert (records, failures) == outcome(local_run)  # same greedy summaries, same failures


def test_a_cancelled_stage_a_job_is_finished_by_a_rerun(cluster, cluster_run):
    workdir, _ = cluster_run
    # Inference over (the merge removed its resume entries and per-rank files); selection and verify stay.
    for merged in (STAGE_A, FAILURES, f"results/stage_a/{MISSION}/stats.json"):
        (workdir / merged).unlink()
    output = workdir / "cancelled_run.log"
    with open(output, "w", encoding="utf-8") as sink:
        run = subprocess.Popen(
            [str(BIN / "snakemake"), *cluster_args(), "--", STAGE_A],
            cwd=workdir,
            env=cluster,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    resume = workdir / f"results/stage_a/{MISSION}/resume"
    try:
        # Cancel as soon as the first group is on disk, however long the machine takes to get there.
        while not any(p.stat().st_size for p in resume.glob("rank*.jsonl")) and run.poll() is None:
            time.sleep(0.5)
        running = [job for job in slurm_jobs(cluster) if job["rule"] == "stage_a_infer" and job["state"] == "RUNNING"]
        assert len(running) == 1, f"no Stage-A job to cancel mid-way:\n{output.read_text()[-4000:]}"
        subprocess.run(["scancel", running[0]["id"]], env=cluster, check=True)
        # Snakemake sees the job fail.
        assert run.wait(timeout=600) != 0
    finally:
        if run.poll() is None:
            run.kill()
    # Resume entries are per image: some were summarised, not all.
    selection = list(read_jsonl(workdir / f"results/stage_a/{MISSION}/selection.jsonl"))
    finished = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in resume.glob("rank*.jsonl"))
    assert 0 < finished < sum(len(group["images"]) for group in selection)
    assert {job["state"] for job in slurm_jobs(cluster) if job["id"] == running[0]["id"]} == {"CANCELLED"}

    cluster_snakemake(workdir, cluster, "--", STAGE_A)
    log = (workdir / f"results/logs/stage_a/{MISSION}/infer.log").read_text(encoding="utf-8")
    resumed = sum(int(part.split(",")[0]) for part in log.split('"resumed": ')[1:])
    assert resumed >= finished
    records, failures = outcome(workdir)
    selected = {(group["group_id"], group["label"]) for group in selection}
    assert not set(records) & set(failures)
    assert set(records) | set(failures) == selected and len(selected) == 4
