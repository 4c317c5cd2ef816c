"""Evaluation speed: eval-loss rows/s and golden-dump seconds, through the library the eval jobs run.

CPU (default): the tiny model of the demo run. Needs the demo built (`make demo`, or
`snakemake results/train/sft/demo/checkpoint results/eval/demo/candidates.jsonl`); scores the
configured eval set and dumps a golden set drawn from the candidates; writes bench/results/eval_cpu.json.

GPU (`--gpu`): a Qwen3-VL-2B-shaped model with random bf16 weights (bench/configs/qwen3_vl_2b_sizes.json,
built here by the tiny-model builder) at the 786432-pixel cap of bench/configs/train_gpu_2b.yaml: the
image rows of the demo candidates (1024x768 photos: 768 image tokens, about 850–1100 tokens a row)
repeated to --rows, scored at each --batch-sizes; then the golden dump. Writes bench/results/eval_gpu.json
with the GPU's name. The GPU machine lacks ms-swift, jsonschema and the Qwen tokenizer: they travel as
wheels (`pip download` of the lock's versions for Python 3.12, installed into a PYTHONPATH folder there).

Rows/s is the eval job's own loop (`Scorer.row_losses`: ms-swift encoding and collation on the CPU, one
batch ahead in a thread, while the device scores the batch before); `encode_rows_per_s` times the
encoding alone and `forward_rows_per_s` the device's part alone (pre-collated batches of the largest
size): the loop can be no faster than the slower of the two.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from machine import cpu_model, nvidia_smi, repo_path  # noqa: E402 (bench/machine.py, beside this script)

from vlqc.evaluation.candidates import token_counter  # noqa: E402
from vlqc.evaluation.golden import dump_rows, golden_set  # noqa: E402
from vlqc.evaluation.loss import Scorer, load_row_images, summarize  # noqa: E402
from vlqc.inference.generation import Generator, Request  # noqa: E402
from vlqc.jsonl import read_json, read_jsonl, write_json  # noqa: E402
from vlqc.schemas import section  # noqa: E402
from vlqc.train.config import load_train_config  # noqa: E402

# The eval settings of the workflow's config (config/config.yaml, schema defaults filled).
EVAL = section(
    "config", "eval", yaml.safe_load((REPO / "config/config.yaml").read_text()).get("eval", {}), "config.yaml"
)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def score(scorer: Scorer, rows: list[dict], images: list, batch_size: int) -> dict:
    """One timed pass of the eval job's loop after a one-batch warm-up."""
    scorer.row_losses(rows[:batch_size], images[:batch_size], batch_size, desc="warm-up")
    synchronize()
    started = time.perf_counter()
    losses = scorer.row_losses(rows, images, batch_size, desc=f"batch {batch_size}")
    synchronize()
    seconds = time.perf_counter() - started
    return {
        "batch_size": batch_size,
        "rows": len(rows),
        "seconds": round(seconds, 2),
        "rows_per_s": round(len(rows) / seconds, 1),
        "label_tokens": sum(r.tokens for r in losses),
        "eval_loss": summarize(losses)["eval_loss"],
    }


def encode_rate(scorer: Scorer, rows: list[dict], images: list) -> dict:
    """Rows/s of ms-swift's encoding alone, and the mean tokens of an encoded row."""
    started = time.perf_counter()
    lengths = [len(scorer.encode(row, ims)[0]["input_ids"]) for row, ims in zip(rows, images)]
    return {
        "encode_rows_per_s": round(len(rows) / (time.perf_counter() - started), 1),
        "mean_row_tokens": round(sum(lengths) / len(lengths)),
    }


def forward_rate(scorer: Scorer, rows: list[dict], images: list, batch_size: int) -> float:
    """Rows/s of the device's part alone: batches encoded and collated beforehand, then scored."""
    batches = list(scorer._prepared(rows, images, batch_size))
    synchronize()
    started = time.perf_counter()
    with torch.inference_mode():
        for _, _, batch in batches:
            scorer._batch_losses(batch)
    synchronize()
    return round(len(rows) / (time.perf_counter() - started), 1)


def profile(scorer: Scorer, rows: list[dict], images: list, batch_size: int) -> str:
    """The ops of the device's part for two pre-collated batches, by device time (torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batches = list(scorer._prepared(rows[: 2 * batch_size], images[: 2 * batch_size], batch_size))
    with torch.inference_mode(), torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _, _, batch in batches:
            scorer._batch_losses(batch)
        synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)


def golden(scorer: Scorer, base: Path, candidates: list[dict], images_root: Path, settings: dict) -> dict:
    """A golden dump of `golden_rows` candidates with the scorer's model, timed."""
    rows = golden_set(candidates, EVAL["golden_rows"], EVAL["golden_seed"], "candidates")
    device = next(scorer.model.parameters()).device.type
    generator = Generator(base, device=device, max_pixels=scorer.max_pixels, model=scorer.model)

    def request(row):
        system, user = (message["content"] for message in row["messages"][:2])
        return Request(system, user, load_row_images([row], images_root, scorer.max_pixels, scorer.factor)[0])

    synchronize()
    started = time.perf_counter()
    dump = dump_rows(generator.generate, request, token_counter(base), rows, settings)
    synchronize()
    return {"rows": len(dump), "seconds": round(time.perf_counter() - started, 2), "decoding": settings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="the 2B-shaped model on the first GPU")
    parser.add_argument("--base", type=Path, default=REPO / "results/train/base/tiny")
    parser.add_argument("--checkpoint", type=Path, default=REPO / "results/train/sft/demo/checkpoint")
    parser.add_argument("--config", type=Path, default=None, help="default: demo.yaml (CPU), train_gpu_2b.yaml (GPU)")
    parser.add_argument("--candidates", type=Path, default=REPO / "results/eval/demo/candidates.jsonl")
    parser.add_argument("--images", type=Path, default=REPO / "results/data/demo", help="root of the rows' images")
    parser.add_argument("--split", type=Path, default=None, help="CPU: eval set to score (default: the configured one)")
    parser.add_argument("--rows", type=int, default=512, help="GPU: image rows scored per batch size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: eval.batch_size (CPU)")
    parser.add_argument("--profile", action="store_true", help="also print the device part's ops by device time")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/eval_{cpu,gpu}.json")
    args = parser.parse_args()
    out = args.out or REPO / f"bench/results/eval_{'gpu' if args.gpu else 'cpu'}.json"
    config = args.config or REPO / ("bench/configs/train_gpu_2b.yaml" if args.gpu else "config/train/demo.yaml")
    cfg = load_train_config(config)
    candidates = list(read_jsonl(args.candidates, schema="eval_row"))
    report: dict = {"benchmark": out.stem, "config": repo_path(config), "cpu": cpu_model()}

    with tempfile.TemporaryDirectory() as scratch:
        base, checkpoint = args.base, args.checkpoint
        if args.gpu:
            from vlqc.train.base_model import build_tiny_base

            sizes = json.loads((REPO / "bench/configs/qwen3_vl_2b_sizes.json").read_text())
            started = time.perf_counter()
            base = checkpoint = Path(scratch) / "qwen3_vl_2b_shaped"
            build_tiny_base(base, sizes, seed=0)
            report |= {"gpu": nvidia_smi(), "model_build_s": round(time.perf_counter() - started, 1)}
            image_rows = [row for row in candidates if row["images"]]
            rows = [image_rows[i % len(image_rows)] for i in range(args.rows)]
            batch_sizes = args.batch_sizes or [8, 16, 32]
        else:
            split = args.split or REPO / f"results/eval/demo/split_seed{EVAL['split_seed']}_eval{EVAL['rows']}.json"
            rows = read_json(split, "eval_split")["rows"]
            report["split"] = repo_path(split)
            batch_sizes = args.batch_sizes or [EVAL["batch_size"]]
            report["threads"] = torch.get_num_threads()

        started = time.perf_counter()
        scorer = Scorer(checkpoint, base, cfg)
        report["model_load_s"] = round(time.perf_counter() - started, 1)
        report["parameters"] = sum(p.numel() for p in scorer.model.parameters())
        images = load_row_images(rows, args.images, scorer.max_pixels, scorer.factor)
        report |= encode_rate(scorer, rows[:64], images[:64])
        report["eval"] = [score(scorer, rows, images, size) for size in batch_sizes]
        report["forward_rows_per_s"] = forward_rate(scorer, rows, images, batch_sizes[-1])
        if args.profile:
            print(profile(scorer, rows, images, batch_sizes[-1]))
        if torch.cuda.is_available():
            report["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        report["golden_dump"] = golden(scorer, base, candidates, args.images, EVAL["golden_decoding"])

    write_json(out, report)
    print(f"{'batch':>6} {'rows':>6} {'seconds':>8} {'rows/s':>8}")
    for entry in report["eval"]:
        print(f"{entry['batch_size']:>6} {entry['rows']:>6} {entry['seconds']:>8} {entry['rows_per_s']:>8}")
    print(f"encode only: {report['encode_rows_per_s']} rows/s; golden dump of {report['golden_dump']['rows']} rows:")
    print(f"{report['golden_dump']['seconds']} s; written {repo_path(out)}")


if __name__ == "__main__":
    main()
