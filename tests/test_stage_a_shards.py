"""stage_a.shards as Snakemake plans it: K inference jobs per mission, each its own torchrun in its own folder,
gathered by one merge; one shard plans the files and commands of a run without shards (docs/stage-a.md#shards).
What the shard jobs compute is tested in test_stage_a_infer.py and test_stage_a_merge.py, a real run in
test_e2e_stage_a.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

BIN = Path(sys.executable).parent
MISSION = "挡风板安装检查"
TARGET = f"results/{MISSION}_stage_a.jsonl"


def plan(tmp_path, stage_a: str) -> str:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"stage_a: {stage_a}\n", encoding="utf-8")
    result = subprocess.run(
        [str(BIN / "snakemake"), "-n", "--forceall", TARGET, "--configfile", str(overlay)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def jobs(plan_text: str, rule: str) -> list[str]:
    """The plan's blocks of `rule`, each up to the next rule."""
    return re.findall(rf"^rule {rule}:\n(.*?)(?=^rule |\Z)", plan_text, flags=re.M | re.S)


def test_k_shards_plan_k_torchrun_jobs_and_one_merge_of_all_their_rank_files(tmp_path):
    text = plan(tmp_path, "{sharding_mode: per_image, cpu_ranks: 2, shards: 3}")
    infer = jobs(text, "stage_a_infer")
    assert len(infer) == 3
    folder = f"results/stage_a/{MISSION}"
    for shard in range(3):
        [job] = [j for j in infer if f"shard={shard}" in j]
        assert f"log: results/logs/stage_a/{MISSION}/infer.shard{shard}.log" in job
        for name in (f"{MISSION}_stage_a.images.rank0.jsonl", "rank1.stats.json", "run_metadata.json"):
            assert f"{folder}/shard{shard}/{name}" in job
        assert "--nproc_per_node=2" in job and f"--shard {shard} " in job and '"shards": 3' in job
        # Every shard appends to the mission's one resume folder, each rank to its own file.
        assert f"--resume-dir results/stage_a/'{MISSION}'/resume " in job
    [merge] = jobs(text, "stage_a_merge")
    rank_files = set(re.findall(rf"{folder}/shard(\d)/{MISSION}_stage_a\.images\.rank(\d)\.jsonl", merge))
    assert rank_files == {(str(s), str(r)) for s in range(3) for r in range(2)}
    assert "--ranks-per-shard 2" in merge


def test_one_shard_plans_the_files_of_a_run_without_shards(tmp_path):
    text = plan(tmp_path, "{cpu_ranks: 2}")
    [job] = jobs(text, "stage_a_infer")
    assert "shard" not in job.split("Shell command:")[0]  # no shard folder, wildcard or log
    folder = f"results/stage_a/{MISSION}"
    for name in (f"{MISSION}_stage_a.rank0.jsonl", f"{MISSION}_stage_a.rank1.jsonl", "rank1.stats.json"):
        assert f"{folder}/{name}" in job
    assert f"log: results/logs/stage_a/{MISSION}/infer.log" in job and "--shard" not in job
    assert f"--manifest-dir '{folder}' " in job
