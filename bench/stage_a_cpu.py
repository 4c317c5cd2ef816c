"""Stage-A throughput on CPU: images/s for 1 vs 2 gloo ranks in both sharding modes.

Runs the same command the `stage_a_infer` rule runs (torchrun + scripts/stage_a_infer.py) on one
mission's selection, with the threads of the machine split over the ranks, and times it end to
end (model loading included, as a user sees it). Every run starts without resume entries.

    python bench/stage_a_cpu.py --checkpoint results/train/sft/demo/merged --mission 挡风板安装检查

Prints a table and writes bench/results/stage_a_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from machine import cpu_model  # noqa: E402 (bench/machine.py, beside this script)
from stage_a_launch import launch  # noqa: E402

from vlqc.stage_a.discover import discover, sample_groups  # noqa: E402
from vlqc.stage_a.jobs import write_selection  # noqa: E402


def run_once(work: Path, args, ranks: int, mode: str) -> dict:
    settings = {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "max_pixels": args.max_pixels}
    seconds, rows = launch(
        work / "selection.jsonl",
        work / f"{mode}.{ranks}",
        mission=args.mission,
        checkpoint=args.checkpoint,
        mode=mode,
        ranks=ranks,
        settings=settings,
    )
    return {
        "ranks": ranks,
        "mode": mode,
        "images": len(rows),
        "ok": sum(r["ok"] for r in rows),
        "seconds": round(seconds, 1),
        "images_per_s": round(len(rows) / seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "results/train/sft/demo/merged")
    parser.add_argument("--root", type=Path, default=REPO / "resources/demo/tickets")
    parser.add_argument("--mission", default="挡风板安装检查")
    parser.add_argument("--groups", type=int, default=8, help="pass and fail groups each")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--max-pixels", type=int, default=65536)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/stage_a_cpu.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        groups = sample_groups(discover(args.root, args.mission), args.groups, args.groups, seed=17)
        write_selection(work / "selection.jsonl", groups)
        runs = [run_once(work, args, ranks, mode) for mode in ("per_group", "per_image") for ranks in (1, 2)]
    print(f"{'mode':<10} {'ranks':>5} {'images':>6} {'ok':>4} {'seconds':>8} {'images/s':>9}")
    for r in runs:
        print(f"{r['mode']:<10} {r['ranks']:>5} {r['images']:>6} {r['ok']:>4} {r['seconds']:>8} {r['images_per_s']:>9}")
    report = {
        "benchmark": "stage_a_cpu",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "checkpoint": str(args.checkpoint),
        "mission": args.mission,
        "groups": len(groups),
        "settings": {
            "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens,
            "max_pixels": args.max_pixels,
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
