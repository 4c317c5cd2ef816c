"""How long Snakemake takes to plan Stage-A of a big mission in shards: `snakemake --dry-run` of one mission's
`results/<mission>_stage_a.jsonl` with 10 000 ticket groups and `stage_a.shards` 64 (8 GPU ranks each, so the
merge gathers 512 rank files), against one shard.

In a scratch copy of the workflow under results/bench/ it writes the tickets (one small photo a group) and an
overlay config (a stand-in model folder as `stage_a.checkpoint`, so that no training is planned), then times
the whole `snakemake --dry-run` command, start-up included, as a user would wait for it:

- `fresh`: nothing built yet; the plan is select, verify, the shard jobs and the merge;
- `selected`: after the real select step has written the 10 000-group selection; the plan is verify, the
  shard jobs and the merge.

The number of groups does not enter the plan (shards deal the selection at run time, vlqc.stage_a.jobs);
the scenarios show it. Prints a table and writes bench/results/stage_a_plan.json. Target: ≤ 10 s for 10 000
groups and 64 shards on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

from machine import cpu_model  # bench/machine.py, beside this script
from PIL import Image

from vlqc.jsonl import write_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the e2e tests' scratch copy of the workflow
from workflow_env import copy_workflow  # noqa: E402

BIN = Path(sys.executable).parent
MISSION = "挡风板安装检查"
TARGET = f"results/{MISSION}_stage_a.jsonl"
TARGET_SECONDS = 10.0


def write_tickets(root: Path, groups: int) -> None:
    """`groups` ticket folders of MISSION, one in three failed, one small photo each."""
    photo = BytesIO()
    Image.new("RGB", (32, 24), (90, 120, 150)).save(photo, format="JPEG")
    for seq in range(groups):
        label = "审核不通过" if seq % 3 == 0 else "审核通过"
        folder = root / MISSION / label / f"QC-TEMP-20241111-{seq:07d}"
        folder.mkdir(parents=True)
        (folder / f"QC-TEMP-20241111-{seq:07d}_1.jpg").write_bytes(photo.getvalue())


def write_overlay(workdir: Path, shards: int, gpus: int) -> Path:
    path = workdir / f"plan_k{shards}.yaml"
    settings = f"input_root: tickets, checkpoint: model, sharding_mode: per_image, gpus: {gpus}, shards: {shards}"
    path.write_text(f"stage_a: {{{settings}}}\n", encoding="utf-8")
    return path


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [str(BIN / "snakemake"), "--cores", "1", *args], cwd=workdir, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def planned_jobs(stdout: str) -> dict[str, int]:
    """The plan's job counts by rule (Snakemake's "Job stats" table)."""
    table = stdout.split("Job stats:")[-1]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M) if rule != "total"}


def time_plan(workdir: Path, overlay: Path, repeats: int) -> dict:
    seconds, jobs = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        done = snakemake(workdir, "--dry-run", "--configfile", overlay.name, "--", TARGET)
        seconds.append(time.perf_counter() - start)
        jobs = planned_jobs(done.stdout)
    return {
        "jobs": jobs,
        "seconds_per_run": [round(s, 2) for s in seconds],
        "median_s": round(statistics.median(seconds), 2),
        "max_s": round(max(seconds), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=10_000)
    parser.add_argument(
        "--shards", type=int, nargs="+", default=[1, 64], help="shard counts to plan (the last one is judged)"
    )
    parser.add_argument("--gpus", type=int, default=8, help="ranks of each shard job")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "stage_a_plan.json")
    args = parser.parse_args()

    scratch = REPO / "results" / "bench"
    scratch.mkdir(parents=True, exist_ok=True)
    runs = []
    with tempfile.TemporaryDirectory(dir=scratch, prefix="stage_a_plan-") as tmp:
        workdir = Path(tmp)
        copy_workflow(workdir)
        write_tickets(workdir / "tickets", args.groups)
        (workdir / "model").mkdir()
        (workdir / "model" / "config.json").write_text("{}", encoding="utf-8")
        overlays = {shards: write_overlay(workdir, shards, args.gpus) for shards in args.shards}
        for shards, overlay in overlays.items():
            runs.append({"scenario": "fresh", "shards": shards, **time_plan(workdir, overlay, args.repeats)})
        start = time.perf_counter()
        selection = f"results/stage_a/{MISSION}/selection.jsonl"
        snakemake(workdir, "--configfile", overlays[args.shards[-1]].name, "--", selection)
        select_s = time.perf_counter() - start
        selected = sum(1 for _ in open(workdir / selection, encoding="utf-8"))
        for shards, overlay in overlays.items():
            runs.append({"scenario": "selected", "shards": shards, **time_plan(workdir, overlay, args.repeats)})

    judged = [run for run in runs if run["shards"] == args.shards[-1]]
    ok = all(run["max_s"] <= TARGET_SECONDS for run in judged)
    report = {
        "benchmark": "stage_a_plan",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "snakemake": snakemake(REPO, "--version").stdout.strip(),
        "mission": MISSION,
        "groups": args.groups,
        "selected_groups": selected,
        "ranks_per_shard": args.gpus,
        "select_s": round(select_s, 2),
        "runs": runs,
        "target_seconds": TARGET_SECONDS,
        "pass": ok,
    }
    print(f"{'scenario':<9} {'shards':>6} {'jobs':>5} {'median s':>9} {'max s':>6}  per run")
    for run in runs:
        jobs = sum(run["jobs"].values())
        times = f"{run['median_s']:>9} {run['max_s']:>6}  {run['seconds_per_run']}"
        print(f"{run['scenario']:<9} {run['shards']:>6} {jobs:>5} {times}")
    print(
        f"{args.groups} groups ({selected} selected), select step {report['select_s']} s; "
        f"{args.shards[-1]} shards ≤ {TARGET_SECONDS} s: {'pass' if ok else 'FAIL'}"
    )
    write_json(args.out, report)


if __name__ == "__main__":
    main()
