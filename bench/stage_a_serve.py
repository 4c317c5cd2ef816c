"""Stage-A throughput on CPU: images/s in process (engine plain) vs through `swift deploy` (engine openai).

Runs what one Stage-A rank runs (`run_rank`, per_image, one rank) over the same photos of one mission:
first with the checkpoint in this process, then through `--replicas` servers of `swift deploy` serving the
same checkpoint (transformers engine, `--server-max-batch-size`), requests spread over them with
`--concurrency` in flight per replica. images/s is over the seconds in the engines' generate calls
(model load and server start apart); `wall_s` is the whole rank. Greedy decoding: the rows of every
served run must equal the in-process ones (`rows_equal`), or the script stops. The in-process run is
repeated last, and each run records the 1-minute load average at its start: on a shared machine the
spread between the two plain runs is the noise of the served ones.

Without --checkpoint a tiny base model with random weights is built (`untrained: true` in the JSON;
its answers are not summaries, so every row is an `unparseable_summary` failure quoting the answer, which
still has to match). Without resources/demo/tickets (or --root) demo tickets are generated.

    python bench/stage_a_serve.py            # 4 + 4 groups, 48 new tokens, 1 then 2 replicas

Prints a table and writes bench/results/stage_a_serve.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path
from typing import Any

from machine import REPO, cpu_model, repo_path  # bench/machine.py, beside this script

sys.path.insert(0, str(REPO / "tests"))  # the harness the tests use: tests/support

from support.swift_deploy import swift_deploy

from vlqc.demo import generate
from vlqc.inference.openai_engine import Servers
from vlqc.jsonl import read_jsonl, write_json
from vlqc.manifest import package_versions
from vlqc.missions import load_missions
from vlqc.stage_a.discover import discover, sample_groups
from vlqc.stage_a.infer import Settings, run_rank
from vlqc.train.base_model import build_tiny_base

MISSIONS_FILE = REPO / "config/missions.yaml"
DEFAULT_ROOT = REPO / "resources/demo/tickets"
SERVED_NAME = "vlqc-bench"
STARTUP_DEADLINE_S = 300
DEMO_SEED = 20241111
VERSIONS = ("torch", "transformers", "ms-swift")


def rank(groups, mission: str, checkpoint: Path, settings: Settings, work: Path) -> tuple[list[dict], dict]:
    """One fresh rank (no resume entries) over every photo; its rows and counts, with its wall seconds."""
    started = time.perf_counter()
    counts = run_rank(
        groups,
        mission=mission,
        missions=load_missions(MISSIONS_FILE),
        checkpoint=checkpoint,
        settings=settings,
        mode="per_image",
        rank=0,
        world=1,
        out=work / "rank0.jsonl",
        resume_dir=work / "resume",
    )
    wall = time.perf_counter() - started
    return list(read_jsonl(work / "rank0.jsonl", schema="stage_a_image_row")), {**counts, "wall_s": round(wall, 2)}


def run_row(engine: str, rows: list[dict], counts: dict[str, Any], load: float, **extra: Any) -> dict[str, Any]:
    return {
        "engine": engine,
        **extra,
        "load_avg_1m": round(load, 2),  # at the start: other work on a shared machine skews a run
        "images": counts["images"],
        "ok": sum(row["ok"] for row in rows),
        "generate_s": counts["generate_s"],
        "wall_s": counts["wall_s"],
        "images_per_s": round(counts["generated"] / counts["generate_s"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="model folder; default: an untrained tiny base built here")
    parser.add_argument("--root", type=Path, help=f"tickets; default: {repo_path(DEFAULT_ROOT)}, else generated")
    parser.add_argument("--mission", default="挡风板安装检查")
    parser.add_argument("--groups", type=int, default=4, help="pass and fail groups each")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--max-pixels", type=int, default=65536)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="served runs, with this many servers")
    parser.add_argument("--concurrency", type=int, default=8, help="stage_a.openai.concurrency (per replica)")
    parser.add_argument("--server-max-batch-size", type=int, default=8, help="swift deploy --max_batch_size")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/stage_a_serve.json")
    args = parser.parse_args()
    settings = Settings(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, max_pixels=args.max_pixels)
    with tempfile.TemporaryDirectory(prefix="stage_a_serve_bench-") as tmp:
        work = Path(tmp)
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = work / "tiny"
            build_tiny_base(checkpoint)
        root = args.root or DEFAULT_ROOT
        if args.root is None and not DEFAULT_ROOT.is_dir():
            root = work / "tickets"
            missions = {args.mission: load_missions(MISSIONS_FILE)[args.mission]}
            generate(root, missions, 4 * args.groups, DEMO_SEED, manifest=work / "tickets.json", progress=False)
        groups = sample_groups(discover(root, args.mission), args.groups, args.groups, seed=17)
        load = os.getloadavg()[0]
        local_rows, counts = rank(groups, args.mission, checkpoint, settings, work / "plain")
        runs = [run_row("plain", local_rows, counts, load)]
        server_start_s = []
        for replicas in args.replicas:
            with ExitStack() as stack:
                servers = []
                for n in range(replicas):
                    folder = work / f"server{replicas}.{n}"
                    folder.mkdir()
                    servers.append(
                        stack.enter_context(
                            swift_deploy(
                                checkpoint, folder, SERVED_NAME, args.server_max_batch_size, STARTUP_DEADLINE_S
                            )
                        )
                    )
                server_start_s += [round(server.startup_s, 1) for server in servers]
                openai = Servers(
                    base_urls=tuple(server.base_url for server in servers),
                    model=SERVED_NAME,
                    concurrency=args.concurrency,
                )
                served = dataclasses.replace(settings, engine="openai", openai=openai)
                load = os.getloadavg()[0]
                rows, counts = rank(groups, args.mission, checkpoint, served, work / f"openai{replicas}")
            if rows != local_rows:
                sys.exit(f"the rows through {replicas} replica(s) differ from the in-process ones")
            runs.append(run_row("openai", rows, counts, load, replicas=replicas, rows_equal=True))
        # In process once more: the two plain runs bracket the served ones, showing how much the machine's
        # other work moved the numbers in between.
        load = os.getloadavg()[0]
        rows, counts = rank(groups, args.mission, checkpoint, settings, work / "plain_again")
        runs.append(run_row("plain", rows, counts, load, rows_equal=rows == local_rows))
    print(
        f"{'engine':<7} {'replicas':>8} {'load':>5} {'images':>6} {'ok':>4} {'generate s':>10} "
        f"{'wall s':>7} {'images/s':>9}"
    )
    for r in runs:
        print(
            f"{r['engine']:<7} {r.get('replicas', '-'):>8} {r['load_avg_1m']:>5} {r['images']:>6} {r['ok']:>4} "
            f"{r['generate_s']:>10} "
            f"{r['wall_s']:>7} {r['images_per_s']:>9}"
        )
    versions = package_versions()
    report = {
        "benchmark": "stage_a_serve",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        **{name: versions[name] for name in VERSIONS},
        "openai": metadata.version("openai"),
        "checkpoint": "tiny base built by build_tiny_base" if args.checkpoint is None else repo_path(checkpoint),
        "untrained": args.checkpoint is None,
        "tickets": repo_path(root) if root != work / "tickets" else f"demo tickets generated, seed {DEMO_SEED}",
        "mission": args.mission,
        "groups": len(groups),
        "settings": {
            "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens,
            "max_pixels": args.max_pixels,
            "concurrency": args.concurrency,
            "server": {"engine": "swift deploy, transformers", "max_batch_size": args.server_max_batch_size},
        },
        "server_start_s": server_start_s,
        "runs": runs,
    }
    write_json(args.out, report)


if __name__ == "__main__":
    main()
