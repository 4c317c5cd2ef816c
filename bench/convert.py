"""Conversion throughput on the demo tickets: images/s and peak memory at N workers.

Generates a demo set of ~1 MP photos (cached under results/bench/), converts it with
the library the rule uses, prints a table and writes bench/results/convert.json.
Target (issue 2): ≥ 40 images/s at 2 workers on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path

from machine import cpu_model  # bench/machine.py, beside this script
from PIL import Image

from vlqc.data.convert import ConvertSettings
from vlqc.data.dataset import convert_dataset
from vlqc.demo import generate
from vlqc.jsonl import write_json

REPO = Path(__file__).resolve().parents[1]
MISSIONS = ["挡风板安装检查", "BBU安装方式检查（正装）", "BBU接地线检查", "BBU线缆布放要求"]


def peak_rss_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tickets-per-mission", type=int, default=40)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "convert.json")
    args = parser.parse_args()

    scratch = REPO / "results" / "bench" / "convert"
    tickets = scratch / f"tickets-{args.tickets_per_mission}"
    if not tickets.is_dir():
        generate(tickets, MISSIONS, args.tickets_per_mission, seed=1, manifest=scratch / "tickets.json")
    # Header-only reads: the size of the photos as they come in.
    photos = [p for p in tickets.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    input_mp = sum(Image.open(p).size[0] * Image.open(p).size[1] for p in photos) / 1e6 / len(photos)
    rows = []
    for workers in args.workers:
        best = None
        for _ in range(args.repeats):
            out_dir = scratch / f"out-{workers}"
            shutil.rmtree(out_dir, ignore_errors=True)
            start = time.perf_counter()
            summary = convert_dataset(ConvertSettings(root=tickets, out_dir=out_dir), workers=workers)
            seconds = time.perf_counter() - start
            best = seconds if best is None else min(best, seconds)
        records = [json.loads(line) for line in (out_dir / "all_samples.jsonl").open(encoding="utf-8")]
        megapixels = sum(r["width"] * r["height"] for r in records) / 1e6
        rows.append(
            {
                "workers": workers,
                "images": summary["samples"],
                "seconds": round(best, 3),
                "images_per_s": round(summary["samples"] / best, 1),
                "input_megapixels_per_image": round(input_mp, 3),
                "output_megapixels_per_image": round(megapixels / len(records), 3),
                "peak_rss_mib": round(peak_rss_mib(), 1),
            }
        )
    report = {
        "benchmark": "convert",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "target_images_per_s": 40,
        "rows": rows,
    }
    print(f"{'workers':>7} {'images':>6} {'seconds':>8} {'img/s':>7} {'MP in':>6} {'MP out':>6} {'peak MiB':>9}")
    for row in rows:
        print(
            f"{row['workers']:>7} {row['images']:>6} {row['seconds']:>8} {row['images_per_s']:>7} "
            f"{row['input_megapixels_per_image']:>6} {row['output_megapixels_per_image']:>6} {row['peak_rss_mib']:>9}"
        )
    write_json(args.out, report)


if __name__ == "__main__":
    main()
