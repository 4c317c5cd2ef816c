"""Stage-B throughput on CPU: tickets/s in eval mode for the hf and openai backends.

Runs what the `stage_b_eval` rule runs (`run_stage_b` with the schema's stage_b defaults, the mission's
seed guidance and the eval grid) over the same tickets: with the checkpoint in this process (hf), as the
rule does with `stage_b.cpu_ranks: --ranks` (hf×N: scripts/stage_b.py under torchrun, the prompts split
over the ranks), and through OpenAIBackend against `swift deploy` serving the same checkpoint (openai).
The backend's set-up (hf: model load; openai: tokenizer load) and the server's start are timed apart
from tickets/s.

Without results/train/sft/demo/merged a tiny base model is built with random weights (`untrained: true`
in the JSON); without --stage-a the Stage-A file is written from the ground-truth summaries of freshly
generated demo tickets, the input tests/test_e2e_stage_b.py gives Stage-B.

    python bench/stage_b.py --tickets 16 --max-new-tokens 64

Prints a table and writes bench/results/stage_b.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Any

from machine import REPO, cpu_model, repo_path  # bench/machine.py, beside this script

sys.path.insert(0, str(REPO / "tests"))  # the harness the tests use: tests/support

from support.ground_truth import ground_truth_records
from support.swift_deploy import swift_deploy

from vlqc.data.convert import ConvertSettings
from vlqc.data.dataset import convert_dataset
from vlqc.demo import generate
from vlqc.jsonl import read_jsonl, write_json, write_jsonl
from vlqc.manifest import package_versions
from vlqc.missions import load_missions
from vlqc.stage_b.backends import make_backend
from vlqc.stage_b.engine import (
    EVAL,
    FAILURE_FILE,
    JSONL_SCHEMAS,
    METRICS_FILE,
    TRAJECTORIES_FILE,
    Settings,
    backend_config,
    run_stage_b,
    stage_b_config,
)
from vlqc.train.base_model import build_tiny_base

MISSIONS_FILE = REPO / "config/missions.yaml"
DEFAULT_CHECKPOINT = REPO / "results/train/sft/demo/merged"
SERVED_NAME = "vlqc-bench"
STARTUP_DEADLINE_S = 300  # importing ms-swift and loading the model take ~25 s on 2 idle cores
VERSIONS = ("torch", "transformers", "ms-swift")


# --- inputs -------------------------------------------------------------------------------------


def resolve_checkpoint(given: Path | None, work: Path) -> tuple[Path, bool]:
    """(checkpoint, untrained): the one given, else the demo's merged SFT model, else a tiny base built here."""
    if given is not None:
        return given, False
    if DEFAULT_CHECKPOINT.is_dir():
        return DEFAULT_CHECKPOINT, False
    build_tiny_base(work / "tiny")
    return work / "tiny", True


def demo_stage_a(work: Path, mission: str, tickets: int, seed: int) -> Path:
    """A Stage-A file of `tickets` fresh demo tickets, each image's summary the converter's ground truth."""
    entry = load_missions(MISSIONS_FILE)[mission]
    domain = entry["domain"]
    generate(work / "demo", {mission: entry}, tickets, seed, manifest=work / "demo.json", progress=False)
    convert_dataset(ConvertSettings(work / "demo", work / "data", mission_domains={mission: domain}), workers=1)
    samples = read_jsonl(work / "data/all_samples.jsonl", schema="sample")
    records = ground_truth_records(samples, mission)
    path = work / "stage_a.jsonl"
    write_jsonl(path, records, schema="stage_a_group")
    return path


def first_lines(source: Path, work: Path, n: int) -> Path:
    """The first `n` lines of a Stage-A file, as they are: bad lines are the engine's to reject."""
    path = work / "stage_a.jsonl"
    with source.open(encoding="utf-8") as lines:
        path.write_text("".join(islice(lines, n)), encoding="utf-8")
    return path


def eval_grid(max_new_tokens: int | None) -> list[dict[str, Any]]:
    """The schema's default eval grid, every entry with `max_new_tokens` when one is given."""
    grid = stage_b_config({})["eval_grid"]
    if max_new_tokens is None:
        return grid
    return [{**entry, "max_new_tokens": max_new_tokens} for entry in grid]


# --- runs ---------------------------------------------------------------------------------------


def run_backend(section: dict[str, Any], checkpoint: Path, stage_a: Path, mission: str, run_dir: Path) -> dict:
    """One eval run as scripts/stage_b.py does it, the backend's set-up timed apart from the tickets."""
    started = time.perf_counter()
    backend = make_backend(backend_config(section, checkpoint))
    backend.count_tokens("", "")  # loads what is loaded on first use (openai: the tokenizer)
    load_s = time.perf_counter() - started
    guidance = REPO / section["guidance_dir"] / f"{mission}.json"
    started = time.perf_counter()
    summary = run_stage_b(
        stage_a,
        mission,
        load_missions(MISSIONS_FILE),
        guidance,
        run_dir,
        backend,
        Settings.from_config(section, EVAL),
        mode=EVAL,
    )
    seconds = time.perf_counter() - started
    return run_row(section["backend"], summary, run_dir, load_s, seconds)


def run_torchrun(
    section: dict[str, Any], checkpoint: Path, stage_a: Path, mission: str, run_dir: Path, ranks: int
) -> dict:
    """The hf backend as the rule runs it with stage_b.cpu_ranks > 1: scripts/stage_b.py under torchrun,
    the cores split over the ranks. The ticket time is the engine's own clock (metrics.jsonl), which
    starts once every rank has loaded the model; the rest of the wall time counts as load."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={ranks}",
        "--max-restarts=0",
        str(REPO / "scripts/stage_b.py"),
        "--mode",
        EVAL,
        "--mission",
        mission,
        "--stage-a",
        str(stage_a),
        "--missions",
        str(MISSIONS_FILE),
        "--guidance",
        str(REPO / section["guidance_dir"] / f"{mission}.json"),
        "--checkpoint",
        str(checkpoint),
        "--run-dir",
        str(run_dir),
        "--settings",
        json.dumps(section, ensure_ascii=False),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"stage_b.py under torchrun failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])  # rank 0's summary; the others print nothing
    seconds = list(read_jsonl(run_dir / METRICS_FILE, schema=JSONL_SCHEMAS[METRICS_FILE]))[-1]["elapsed_seconds"]
    return run_row(f"hf×{ranks}", summary, run_dir, wall - seconds, seconds)


def run_row(backend: str, summary: dict[str, Any], run_dir: Path, load_s: float, seconds: float) -> dict:
    failures = list(read_jsonl(run_dir / FAILURE_FILE, schema=JSONL_SCHEMAS[FAILURE_FILE]))
    return {
        "backend": backend,
        "tickets": summary["tickets"],
        "verdicts": summary["verdicts"],
        "failure_malformed": summary["failures"],
        "failure_codes": dict(Counter(row["code"] for row in failures)),
        "candidates": sum(1 for _ in read_jsonl(run_dir / TRAJECTORIES_FILE)),
        "acc": summary["final"]["acc"],
        "load_s": round(load_s, 2),
        "seconds": round(seconds, 2),
        "tickets_per_s": round(summary["tickets"] / seconds, 3),
    }


def print_table(runs: list[dict], server_start_s: float) -> None:
    print(
        f"{'backend':<8} {'tickets':>7} {'verdicts':>8} {'failures':>8} {'candidates':>10} {'load s':>7} "
        f"{'seconds':>8} {'tickets/s':>9}"
    )
    for r in runs:
        print(
            f"{r['backend']:<8} {r['tickets']:>7} {r['verdicts']:>8} {r['failure_malformed']:>8} "
            f"{r['candidates']:>10} {r['load_s']:>7} {r['seconds']:>8} {r['tickets_per_s']:>9}"
        )
    print(f"swift deploy start (not in tickets/s): {server_start_s:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help=f"default: {DEFAULT_CHECKPOINT}, else an untrained tiny base")
    parser.add_argument("--stage-a", type=Path, help="Stage-A file (first --tickets lines); default: demo tickets")
    parser.add_argument("--mission", default="挡风板安装检查")
    parser.add_argument("--tickets", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, help="override of the eval grid's (default: the schema's)")
    parser.add_argument("--demo-seed", type=int, default=20241111)
    parser.add_argument("--server-max-batch-size", type=int, default=1, help="swift deploy --max_batch_size")
    parser.add_argument(
        "--ranks", type=int, default=2, help="hf also under torchrun with this many CPU ranks (1: skip)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/stage_b.json")
    args = parser.parse_args()
    if args.checkpoint is not None and not args.checkpoint.is_dir():
        parser.error(f"--checkpoint {args.checkpoint} is not a folder")
    grid = eval_grid(args.max_new_tokens)
    with tempfile.TemporaryDirectory(prefix="stage_b_bench-") as tmp:
        work = Path(tmp)
        checkpoint, untrained = resolve_checkpoint(args.checkpoint, work)
        if args.stage_a is None:
            stage_a = demo_stage_a(work, args.mission, args.tickets, args.demo_seed)
        else:
            stage_a = first_lines(args.stage_a, work, args.tickets)
        hf = stage_b_config({"backend": "hf", "eval_grid": grid})
        runs = [run_backend(hf, checkpoint, stage_a, args.mission, work / "hf")]
        if args.ranks > 1:
            runs.append(run_torchrun(hf, checkpoint, stage_a, args.mission, work / "hf_ranks", args.ranks))
        with swift_deploy(checkpoint, work, SERVED_NAME, args.server_max_batch_size, STARTUP_DEADLINE_S) as server:
            base_url, server_start_s = server.base_url, server.startup_s
            openai = stage_b_config(
                {"backend": "openai", "eval_grid": grid, "openai": {"base_url": base_url, "model": SERVED_NAME}}
            )
            runs.append(run_backend(openai, checkpoint, stage_a, args.mission, work / "openai"))
    print_table(runs, server_start_s)
    versions = package_versions()
    report = {
        "benchmark": "stage_b",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        **{name: versions[name] for name in VERSIONS},
        "checkpoint": "tiny base built by build_tiny_base" if untrained else repo_path(checkpoint),
        "untrained": untrained,
        "stage_a": str(args.stage_a) if args.stage_a else f"demo ground truth, seed {args.demo_seed}",
        "mission": args.mission,
        "settings": {
            "eval_grid": [dataclasses.asdict(s) for s in Settings.from_config(hf, EVAL).grid],
            **{key: hf[key] for key in ("batch_size", "samples_per_decode", "max_prompt_tokens")},
            "openai": {key: openai["openai"][key] for key in ("concurrency", "timeout_s", "max_retries")},
            "server": {"engine": "swift deploy, transformers", "max_batch_size": args.server_max_batch_size},
        },
        "server_start_s": round(server_start_s, 1),
        "runs": runs,
    }
    write_json(args.out, report)


if __name__ == "__main__":
    main()
