"""Every job's SLURM resources come from the config's cluster section (docs/cluster.md), read off a dry run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

BIN = Path(sys.executable).parent
MISSION = "挡风板安装检查"
OVERLAY = """stage_a: {gpus: 1}
cluster:
  partition: cpu
  gpu_partition: gpu
  account: qc
  data: {mem_mb: 1111, runtime: 11}
  model: {cpus: 6, mem_mb: 2222, runtime: 22}
"""


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Rule → the resources the dry run prints for its job (one job per rule in this plan)."""
    overlay = tmp_path_factory.mktemp("cluster") / "overlay.yaml"
    overlay.write_text(OVERLAY, encoding="utf-8")
    target = f"results/{MISSION}_stage_a.jsonl"
    result = subprocess.run(
        [str(BIN / "snakemake"), "-n", "--cores", "2", "--forceall", target, "--configfile", str(overlay)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    resources = {}
    for rule, block in re.findall(r"^(?:rule|checkpoint) (\w+):\n((?:    .*\n)*)", result.stdout, flags=re.M):
        line = re.search(r"^    resources: (.*)$", block, flags=re.M).group(1)
        resources[rule] = dict(item.split("=", 1) for item in line.split(", "))
    return resources


def test_every_job_carries_partition_account_memory_and_time_from_the_config(plan):
    assert {"demo_tickets", "convert_annotations", "train_sft", "stage_a_infer", "stage_a_merge"} <= set(plan)
    for rule, resources in plan.items():
        assert resources["slurm_account"] == "qc", rule
        kind = "model" if rule in ("train_sft", "merge_adapter", "stage_a_infer") else "data"
        expected = ("2222", "22") if kind == "model" else ("1111", "11")
        assert (resources["mem_mb"], resources["runtime"]) == expected, rule


def test_a_gpu_job_goes_to_the_gpu_partition_and_asks_for_its_gpus(plan):
    assert (plan["stage_a_infer"]["slurm_partition"], plan["stage_a_infer"]["gpu"]) == ("gpu", "1")
    # train.gpus is 0: training stays on the CPU partition and asks for no GPU.
    assert (plan["train_sft"]["slurm_partition"], plan["train_sft"]["gpu"]) == ("cpu", "0")
    assert plan["stage_a_select"]["slurm_partition"] == "cpu"


def test_a_job_asks_for_its_threads_as_cpus(plan):
    # Locally (--cores 2) a whole-machine job has every core; convert_annotations has convert.workers (2).
    assert plan["stage_a_infer"]["cpus_per_task"] == "2"
    assert plan["convert_annotations"]["cpus_per_task"] == "2"
    assert plan["stage_a_merge"]["cpus_per_task"] == "1"
