"""Training speed of the tiny model on this machine's CPU, through the same ms-swift path as train_sft.

Runs a short SFT (max_steps) on the demo SFT data with the demo run's config,
reads ms-swift's logging.jsonl and writes bench/results/train_cpu.json. Needs
`snakemake results/sft/demo/data results/models/base/tiny` first. The GPU half
(a Qwen3-VL-2B-shaped model, LoRA, bf16) is not written yet.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from vlqc.jsonl import write_json
from vlqc.train.run import train

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=REPO / "config/train/demo.yaml")
    parser.add_argument("--base", type=Path, default=REPO / "results/models/base/tiny")
    parser.add_argument("--data", type=Path, default=REPO / "results/sft/demo/data")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/train_cpu.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=REPO / "results") as scratch:
        scratch = Path(scratch)
        overlay = scratch / "bench.yaml"
        overlay.write_text(
            f"extends: {args.config.resolve()}\ntraining: {{max_steps: {args.steps}, save_steps: {args.steps}, logging_steps: 1}}\n",
            encoding="utf-8",
        )
        started = time.perf_counter()
        train(overlay, args.base, args.data, scratch / "run", nproc=1, gpus=0, threads=os.cpu_count() or 1)
        wall = time.perf_counter() - started
        rows = [json.loads(line) for line in (scratch / "run/logging.jsonl").read_text().splitlines()]
        resolved = json.loads((scratch / "run/resolved_config.json").read_text())
    summary = next(r for r in rows if "train_runtime" in r)
    batch = resolved["training"]["per_device_train_batch_size"] * resolved["training"]["gradient_accumulation_steps"]
    report = {
        "benchmark": "train_cpu",
        "cores": os.cpu_count(),
        "steps": args.steps,
        "batch": batch,
        "seconds_per_step": round(summary["train_runtime"] / args.steps, 3),
        "samples_per_second": summary["train_samples_per_second"],
        "train_runtime_s": summary["train_runtime"],
        "wall_with_startup_s": round(wall, 1),
        "peak_rss_children_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    print(f"{'steps':>5} {'batch':>5} {'s/step':>7} {'samples/s':>9} {'wall s':>7} {'peak MiB':>9}")
    print(f"{report['steps']:>5} {batch:>5} {report['seconds_per_step']:>7} {report['samples_per_second']:>9} "
          f"{report['wall_with_startup_s']:>7} {report['peak_rss_children_mib']:>9}")
    write_json(args.out, report)


if __name__ == "__main__":
    main()
