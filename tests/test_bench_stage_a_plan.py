"""bench/stage_a_plan.py on a small mission: it plans Stage-A with and without shards, before and after the
select step, and reports the jobs of each plan (the 10 000-group numbers are in bench/results/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_plans_one_and_three_shards_and_counts_their_jobs(tmp_path):
    out = tmp_path / "plan.json"
    command = [sys.executable, str(REPO / "bench/stage_a_plan.py"), "--groups", "12", "--shards", "1", "3"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [*command, "--gpus", "2", "--repeats", "1", "--out", str(out)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["groups"] == report["selected_groups"] == 12 and report["ranks_per_shard"] == 2
    jobs = {(run["scenario"], run["shards"]): run["jobs"] for run in report["runs"]}
    assert jobs["fresh", 3] == {"stage_a_select": 1, "stage_a_verify": 1, "stage_a_infer": 3, "stage_a_merge": 1}
    assert jobs["selected", 1] == {"stage_a_verify": 1, "stage_a_infer": 1, "stage_a_merge": 1}
    assert all(len(run["seconds_per_run"]) == 1 for run in report["runs"])
    assert "3 shards" in done.stdout
