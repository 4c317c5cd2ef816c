"""Stage-A merge speed and memory: 100 000 per-image rows into one record per group.

Generates a selection and shuffled rank files (default 10 000 groups × 10 images over 4 ranks,
one row in 1000 a failed image) in a temp folder under results/bench/, then runs `merge` +
`write_merge` in a fresh child process per repeat, so that the peak RSS is that of a real merge
process (interpreter and imports included). Prints a table and writes bench/results/merge.json.
Target: ≤ 5 s and ≤ 1024 MiB peak RSS on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model  # bench/machine.py, beside this script

from vlqc.jsonl import read_jsonl, write_json, write_jsonl
from vlqc.stage_a.merge import merge, write_merge

REPO = Path(__file__).resolve().parents[1]
MISSION = "挡风板安装检查"
TARGET_SECONDS = 5.0
TARGET_PEAK_MIB = 1024


def _summary(rng: random.Random) -> str:
    """A summary line about as long as a real one (~150 characters), different for every row."""
    doc = {
        "类别": "BBU设备",
        "品牌": rng.choice(["华为", "中兴", "爱立信", "无法判断"]),
        "完整性": rng.choice(["显示完整", "只显示部分"]),
        "挡风板需求": rng.choice(["无需安装", "按要求配备", "未按要求配备"]),
        "螺丝": [{"种类": "BBU安装螺丝", "符合性": rng.choice(["符合", "不符合"]), "id": rng.randrange(10**9)}],
        "备注": "机柜内" + "走线整齐" * rng.randint(1, 6),
    }
    return json.dumps(doc, ensure_ascii=False)


def generate(folder: Path, groups: int, images: int, ranks: int, seed: int) -> tuple[Path, list[Path]]:
    """selection.jsonl and <ranks> shuffled rank files holding groups × images rows."""
    rng = random.Random(seed)
    selection = [
        {
            "group_seq": seq,
            "group_id": f"QC-TEMP-20241111-{seq:07d}",
            "mission": MISSION,
            "label": "pass" if seq % 3 else "fail",
            "folder": f"/data/{MISSION}/g{seq}",
            "images": [f"QC-TEMP-20241111-{seq:07d}_{i}.jpg" for i in range(1, images + 1)],
        }
        for seq in range(groups)
    ]
    rows = []
    for group in selection:
        for index, name in enumerate(group["images"], start=1):
            row = {
                "group_seq": group["group_seq"],
                "group_id": group["group_id"],
                "label": group["label"],
                "image_index": index,
                "image_name": name,
                "ok": True,
                "summary": _summary(rng),
            }
            if rng.random() < 0.001:
                del row["summary"]
                row.update(ok=False, error={"code": "decode_error", "message": "image file is truncated"})
            rows.append(row)
    rng.shuffle(rows)
    selection_path = folder / "selection.jsonl"
    write_jsonl(selection_path, selection, schema="stage_a_group_selection")
    rank_paths = []
    for rank in range(ranks):
        path = folder / f"{MISSION}_stage_a.images.rank{rank}.jsonl"
        write_jsonl(path, rows[rank::ranks], schema="stage_a_image_row")
        rank_paths.append(path)
    return selection_path, rank_paths


def child(folder: Path) -> None:
    """One timed merge; prints seconds, counts and this process's peak RSS as JSON."""
    selection = list(read_jsonl(folder / "selection.jsonl", schema="stage_a_group_selection"))
    rank_files = sorted(folder.glob("*.rank*.jsonl"))
    start = time.perf_counter()
    result = merge(selection, rank_files, MISSION)
    write_merge(result, folder / f"{MISSION}_stage_a.jsonl", folder / f"{MISSION}_stage_a.failures.jsonl")
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_mib, "counts": result.counts}))


def run_child(folder: Path) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(folder)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=10, help="images per group")
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "merge.json")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: run one merge in this folder
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return

    scratch = REPO / "results" / "bench"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="merge-") as tmp:
        folder = Path(tmp)
        _, rank_files = generate(folder, args.groups, args.images, args.ranks, args.seed)
        input_mib = sum(p.stat().st_size for p in rank_files) / 2**20
        runs = [run_child(folder) for _ in range(args.repeats)]
    seconds = min(run["seconds"] for run in runs)
    peak = max(run["peak_rss_mib"] for run in runs)
    counts = runs[0]["counts"]
    ok = seconds <= TARGET_SECONDS and peak <= TARGET_PEAK_MIB
    report = {
        "benchmark": "merge",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "rows": counts["rows"],
        "groups": args.groups,
        "rank_files": args.ranks,
        "input_mib": round(input_mib, 1),
        "seconds": round(seconds, 3),
        "seconds_per_run": [round(run["seconds"], 3) for run in runs],
        "peak_rss_mib": round(peak, 1),
        "target_seconds": TARGET_SECONDS,
        "target_peak_rss_mib": TARGET_PEAK_MIB,
        "pass": ok,
        "counts": counts,
    }
    print(f"{'rows':>7} {'groups':>6} {'input MiB':>9} {'seconds':>8} {'peak MiB':>9} {'target':>16} {'result':>6}")
    print(
        f"{report['rows']:>7} {args.groups:>6} {report['input_mib']:>9} {report['seconds']:>8} "
        f"{report['peak_rss_mib']:>9} {'≤5 s, ≤1024 MiB':>16} {'pass' if ok else 'FAIL':>6}"
    )
    write_json(args.out, report)


if __name__ == "__main__":
    main()
