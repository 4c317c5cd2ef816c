"""Run Stage-A as the `stage_a_infer` rule does (torchrun + scripts/stage_a_infer.py) on a selection file.

Shared by bench/stage_a_cpu.py and bench/stage_a_multi_gpu.py, so both time the command users run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vlqc.jsonl import read_jsonl  # noqa: E402


def launch(
    selection: Path,
    out: Path,
    *,
    mission: str,
    checkpoint: Path,
    mode: str,
    ranks: int,
    settings: dict[str, Any],
    gpus: int = 0,
) -> tuple[float, list[dict[str, Any]]]:
    """Wall seconds and the rows of every rank file of one run into the folder `out`, started without resume
    entries. The machine's threads are split over the ranks; their output goes to `<out>.log`, whose tail a
    failed run shows."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={ranks}",
        "--max-restarts=0",
        str(REPO / "scripts/stage_a_infer.py"),
        "--selection",
        str(selection),
        "--mission",
        mission,
        "--missions",
        str(REPO / "config/missions.yaml"),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out / "rank{rank}.jsonl"),
        "--resume-dir",
        str(out / "resume"),
        "--settings",
        json.dumps({**settings, "sharding_mode": mode, "gpus": gpus}),
    ]
    threads = max(1, (os.cpu_count() or 1) // ranks)
    # Keep the caller's PYTHONPATH: on the GPU machines some packages (jsonschema) come from an extra folder.
    python_path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": python_path}
    log = log_of(out)
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as sink:
        done = subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(
            f"{mode} on {ranks} rank(s) failed (exit {done.returncode}); its log: {log}\n"
            + log.read_text(encoding="utf-8")[-3000:]
        )
    rows = [row for path in sorted(out.glob("rank*.jsonl")) for row in read_jsonl(path, schema="stage_a_image_row")]
    return wall, rows


def log_of(out: Path) -> Path:
    """Where `launch` writes the ranks' output of a run into `out`."""
    return out.parent / f"{out.name}.log"
