"""Training speed through the same ms-swift path as train_sft.

CPU (default): the tiny model with the demo run's config on the demo SFT data; needs
`snakemake results/train/sft/demo/data results/train/base/tiny` first; writes train_cpu.json.

GPU (`--gpus 1`): LoRA on a Qwen3-VL-2B-shaped random-weight model in bf16, batch 4 of
~800-token samples (bench/configs/train_gpu_2b.yaml); build the model with
`scripts/base_model.py --settings "{\"sizes\": $(cat bench/configs/qwen3_vl_2b_sizes.json)}"` and the data with
`scripts/sft_dataset.py --config bench/configs/train_gpu_2b.yaml`; writes train_gpu.json with the
GPU model, driver and peak memory.

Runs a short SFT (max_steps), reads ms-swift's logging.jsonl, prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from machine import nvidia_smi, repo_path  # bench/machine.py, beside this script

from vlqc.jsonl import write_json
from vlqc.train.run import train

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=REPO / "config/train/demo.yaml")
    parser.add_argument("--base", type=Path, default=REPO / "results/train/base/tiny")
    parser.add_argument("--data", type=Path, default=REPO / "results/train/sft/demo/data")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--gpus", type=int, default=0, help="0: CPU (gloo, one process)")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/train_{cpu,gpu}.json")
    args = parser.parse_args()
    out = args.out or REPO / f"bench/results/train_{'gpu' if args.gpus else 'cpu'}.json"
    with tempfile.TemporaryDirectory(dir=REPO / "results") as scratch:
        scratch = Path(scratch)
        overlay = scratch / "bench.yaml"
        overlay.write_text(
            f"extends: {args.config.resolve()}\n"
            f"training: {{max_steps: {args.steps}, save_steps: {args.steps}, logging_steps: 1}}\n",
            encoding="utf-8",
        )
        started = time.perf_counter()
        train(overlay, args.base, args.data, scratch / "run", nproc=1, gpus=args.gpus, threads=os.cpu_count() or 1)
        wall = time.perf_counter() - started
        rows = [json.loads(line) for line in (scratch / "run/logging.jsonl").read_text().splitlines()]
        resolved = json.loads((scratch / "run/resolved_config.json").read_text())
    summary = next(r for r in rows if "train_runtime" in r)
    batch = resolved["training"]["per_device_train_batch_size"] * resolved["training"]["gradient_accumulation_steps"]
    report = {
        "benchmark": f"train_{'gpu' if args.gpus else 'cpu'}",
        "cores": os.cpu_count(),
        "config": repo_path(args.config),
        "base_parameters": _parameters(args.base),
        "steps": args.steps,
        "batch": batch,
        "seconds_per_step": round(summary["train_runtime"] / args.steps, 3),
        "samples_per_second": summary["train_samples_per_second"],
        "train_runtime_s": summary["train_runtime"],
        "wall_with_startup_s": round(wall, 1),
        "peak_rss_children_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "steps_per_second": round(args.steps / summary["train_runtime"], 3),
    }
    if args.gpus:
        # ms-swift logs the peak CUDA memory it saw as memory(GiB).
        report["peak_gpu_memory_gib"] = max(r.get("memory(GiB)", 0) for r in rows)
        report["gpu"] = nvidia_smi()
    print(f"{'steps':>5} {'batch':>5} {'s/step':>7} {'samples/s':>9} {'wall s':>7} {'peak MiB':>9}")
    print(
        f"{report['steps']:>5} {batch:>5} {report['seconds_per_step']:>7} {report['samples_per_second']:>9} "
        f"{report['wall_with_startup_s']:>7} {report['peak_rss_children_mib']:>9}"
    )
    if args.gpus:
        print(f"GPU {report['gpu']}: {report['steps_per_second']} steps/s, peak {report['peak_gpu_memory_gib']} GiB")
    write_json(out, report)


def _parameters(base: Path) -> dict:
    """The base model's parameter counts as base_model.py recorded them (absent for a linked model)."""
    meta = base / "vlqc_base_model.json"
    return json.loads(meta.read_text()).get("parameters", {}) if meta.is_file() else {}


if __name__ == "__main__":
    main()
