"""Training speed through the same ms-swift path as train_sft, one run per setting, with a per-step profile.

CPU (default): the tiny model with the demo run's config on the demo SFT data; needs
`snakemake results/train/sft/demo/data results/train/base/tiny` first; writes train_cpu.json.

GPU (`--gpus 1`): LoRA on a Qwen3-VL-2B-shaped random-weight model in bf16 on ~860-token summary rows
(bench/configs/train_gpu_2b.yaml); build the model with
`scripts/base_model.py --settings "{\"sizes\": $(cat bench/configs/qwen3_vl_2b_sizes.json)}"` and the data with
`scripts/sft_dataset.py --config bench/configs/train_gpu_2b.yaml --val` (no val rows: no evaluation pass).
`--variants` names settings of bench/configs/train_gpu_variants.yaml, each run on top of the config.

Every run is a short SFT (`--steps`) with bench/train_timing.py loaded as an ms-swift plugin. Per setting the
report holds the first `--warmup` steps' seconds apart, and over the steady steps after them: samples/s,
tokens/s (real and padded), model FLOP utilisation against the bf16 matmul rate measured on the GPU
(bench/flops.py; docs/training.md#gpu-speed), peak memory, where a step's time goes (train_timing.py names
the phases), and the loss of every step. `--reference NAME` compares each setting's loss curve with that
setting's: step by step where the batch is the same, by samples seen where it is not. The JSON is rewritten
after each setting, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from flops import train_step_flops  # bench/flops.py, beside this script
from machine import cpu_model, repo_path
from train_timing import DEVICE_PHASES

from vlqc.errors import VlqcError
from vlqc.jsonl import read_json, read_jsonl, write_json
from vlqc.train.run import train

REPO = Path(__file__).resolve().parents[1]
PLUGIN = Path(__file__).resolve().parent / "train_timing.py"
HOST_PHASES = ("data", "logging")
WINDOW = 20  # steps of the reference's batch per loss-curve window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="default: demo.yaml (CPU), train_gpu_2b.yaml (GPU)")
    parser.add_argument("--base", type=Path, default=REPO / "results/train/base/tiny")
    parser.add_argument("--data", type=Path, default=REPO / "results/train/sft/demo/data")
    parser.add_argument("--steps", type=int, default=20, help="per setting, unless its entry names `steps`")
    parser.add_argument("--warmup", type=int, default=5, help="first steps reported apart from the steady ones")
    parser.add_argument("--gpus", type=int, default=0, help="0: CPU (gloo, one process)")
    parser.add_argument("--variants", default=None, help="comma-separated names in --variants-file; default: all")
    parser.add_argument("--variants-file", type=Path, default=REPO / "bench/configs/train_gpu_variants.yaml")
    parser.add_argument("--reference", default=None, help="variant whose loss curve the others are compared with")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/train_{cpu,gpu}.json")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} leaves no steady steps after --warmup {args.warmup}")
    gpu = args.gpus > 0
    config = args.config or REPO / ("bench/configs/train_gpu_2b.yaml" if gpu else "config/train/demo.yaml")
    out = args.out or REPO / f"bench/results/train_{'gpu' if gpu else 'cpu'}.json"
    named = gpu or args.variants is not None
    variants = select_variants(args.variants_file, args.variants) if named else {"demo": {"settings": {}}}
    if args.reference and args.reference not in variants:
        parser.error(f"--reference {args.reference} is not among the variants run: {', '.join(variants)}")

    report: dict[str, Any] = {
        "benchmark": f"train_{'gpu' if gpu else 'cpu'}",
        "config": repo_path(config),
        "base_parameters": _parameters(args.base),
        "warmup_steps": args.warmup,
        "machine": machine(gpu),
        "variants": {},
    }
    for name, variant in variants.items():
        settings, steps = variant["settings"], variant.get("steps", args.steps)
        print(f"--- {name}: {json.dumps(settings)}, {steps} steps", flush=True)
        try:
            report["variants"][name] = run_variant(config, settings, steps, args, gpu, report["machine"])
        except VlqcError as exc:  # out of memory, say: recorded, and the next setting runs
            report["variants"][name] = {"settings": settings, "error": str(exc)}
        if args.reference in report["variants"]:
            report["loss_curves"] = {
                other: compare_losses(report["variants"][args.reference], run)
                for other, run in report["variants"].items()
                if other != args.reference and "error" not in run and "error" not in report["variants"][args.reference]
            }
        write_json(out, report)
        print_table(report)


def select_variants(path: Path, names: str | None) -> dict[str, dict]:
    defined = yaml.safe_load(path.read_text(encoding="utf-8"))
    chosen = names.split(",") if names else list(defined)
    unknown = [n for n in chosen if n not in defined]
    if unknown:
        raise SystemExit(f"{path}: no variant named {', '.join(unknown)} (there are: {', '.join(defined)})")
    return {n: defined[n] for n in chosen}


def machine(gpu: bool) -> dict[str, Any]:
    if not gpu:
        return {"cpu": cpu_model(), "cores": os.cpu_count()}
    from gpu import gpu_info, measure_ceilings  # needs CUDA

    return {**gpu_info(), "bf16_flop_per_s": measure_ceilings()["bf16_flop_per_s"]}


@contextmanager
def timed_scratch(overlay_doc: dict) -> Iterator[Path]:
    """A scratch folder under results/ holding `bench.yaml` (the run's config: `overlay_doc`, which extends
    the bench config) with $VLQC_STEP_TIMING pointing into it; the run goes to `run/` there (`read_run`)."""
    with tempfile.TemporaryDirectory(dir=REPO / "results") as scratch:
        scratch = Path(scratch)
        (scratch / "bench.yaml").write_text(yaml.safe_dump(overlay_doc, allow_unicode=True), encoding="utf-8")
        os.environ["VLQC_STEP_TIMING"] = str(scratch / "timing.json")
        yield scratch


def read_run(scratch: Path) -> tuple[dict, list[dict], dict]:
    """The step records, the logging rows and the resolved config of the run in a `timed_scratch` folder."""
    return (
        read_json(scratch / "timing.json"),
        list(read_jsonl(scratch / "run/logging.jsonl")),
        read_json(scratch / "run/resolved_config.json"),
    )


def run_variant(
    config: Path, settings: dict, steps: int, args: argparse.Namespace, gpu: bool, host: dict
) -> dict[str, Any]:
    bench_training = {"max_steps": steps, "save_steps": steps, "logging_steps": 1}
    overlay_doc = {"extends": str(config.resolve()), **settings}
    overlay_doc["training"] = {**settings.get("training", {}), **bench_training}
    with timed_scratch(overlay_doc) as scratch:
        started = time.perf_counter()
        train(
            scratch / "bench.yaml",
            args.base,
            args.data,
            scratch / "run",
            nproc=1,
            gpus=args.gpus,
            threads=os.cpu_count() or 1,
            extra_args=["--external_plugins", str(PLUGIN), "--callbacks", "vlqc_step_timing"],
        )
        wall = time.perf_counter() - started
        timing, logged, resolved = read_run(scratch)
    flops = step_flops(args.base, resolved) if gpu else None
    return {
        "settings": settings,
        "steps": steps,
        **summarize(timing, args.warmup, flops, host.get("bf16_flop_per_s")),
        "loss": [row["loss"] for row in logged if "loss" in row],
        "train_runtime_s": next(row["train_runtime"] for row in logged if "train_runtime" in row),
        "wall_with_startup_s": round(wall, 1),
    }


def step_flops(base: Path, cfg: dict) -> Any:
    """Model FLOPs of a step record under the run's resolved config (which weights train)."""
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(base, local_files_only=True)
    tuner = cfg["tuner"]
    text_trains = tuner["train_type"] == "full" and not tuner["freeze_llm"]
    vision_trains = not tuner["freeze_vit"]
    return lambda step: train_step_flops(model_config, step["lengths"], step["images"], text_trains, vision_trains)


def summarize(timing: dict, warmup: int, flops: Any, peak_flop_per_s: float | None) -> dict[str, Any]:
    """Steady-state speed and the phase profile of one run, from the records of train_timing.py."""
    steps = timing["steps"]
    ends = [timing["began_at"]] + [s["ended_at"] for s in steps]
    walls = [b - a for a, b in zip(ends, ends[1:])]
    steady, seconds = steps[warmup:], statistics.mean(walls[warmup:])
    mean = lambda key: statistics.mean(sum(s[key]) if isinstance(s[key], list) else s[key] for s in steady)  # noqa: E731
    tokens, batch = mean("lengths"), statistics.mean(len(s["lengths"]) for s in steady)
    summary: dict[str, Any] = {
        "batch": batch,
        "first_steps_seconds": [round(w, 3) for w in walls[:warmup]],
        "steady_steps": len(steady),
        "seconds_per_step": round(seconds, 4),
        "seconds_per_step_stdev": round(statistics.stdev(walls[warmup:]), 4) if len(steady) > 1 else 0.0,
        "samples_per_s": round(batch / seconds, 2),
        "tokens_per_s": round(tokens / seconds),
        "padded_tokens_per_s": round(mean("padded_tokens") / seconds),
        "padding_share": round(1 - tokens / mean("padded_tokens"), 4),
        "mean_sequence_tokens": round(tokens / batch, 1),
        "label_tokens_per_step": round(mean("label_tokens"), 1),
        "images_per_step": round(statistics.mean(len(s["images"]) for s in steady), 2),
    }
    if flops is not None:
        achieved = statistics.mean(flops(s) for s in steady) / seconds
        summary["model_tflop_per_s"] = round(achieved / 1e12, 1)
        summary["mfu"] = round(achieved / peak_flop_per_s, 4)
    phases = {p: statistics.mean(s[p] for s in steady) for p in (*HOST_PHASES, *DEVICE_PHASES)}
    summary["phases_seconds"] = {p: round(v, 4) for p, v in phases.items()}
    summary["phases_share"] = {p: round(v / seconds, 3) for p, v in phases.items()}
    if steps[0]["peak_memory_gib"] is not None:
        summary["peak_gpu_memory_gib"] = round(max(s["peak_memory_gib"] for s in steps), 2)
    return summary


def compare_losses(reference: dict, other: dict) -> dict[str, Any]:
    """Mean loss per window of the two curves, the difference and the reference window's standard error.

    Same batch: windows of WINDOW steps. Different batches: windows of WINDOW × the larger batch samples,
    each curve's steps placed by the samples seen when they ended.
    """
    batches = reference["batch"], other["batch"]
    span = WINDOW * max(batches)
    windows = []
    curves = [_by_window(run["loss"], batch, span) for run, batch in zip((reference, other), batches)]
    for index in range(min(len(c) for c in curves)):
        ref, oth = curves[0][index], curves[1][index]
        error = statistics.stdev(ref) / len(ref) ** 0.5 if len(ref) > 1 else float("nan")
        diff = statistics.mean(oth) - statistics.mean(ref)
        windows.append(
            {
                "samples": [index * span, (index + 1) * span],
                "reference": round(statistics.mean(ref), 4),
                "other": round(statistics.mean(oth), 4),
                "difference": round(diff, 4),
                "reference_standard_error": round(error, 4),
            }
        )
    return {
        "by": "step" if batches[0] == batches[1] else "samples seen",
        "windows": windows,
        "within_two_standard_errors": all(abs(w["difference"]) <= 2 * w["reference_standard_error"] for w in windows),
    }


def _by_window(losses: list[float], batch: float, span: float) -> list[list[float]]:
    windows: list[list[float]] = []
    for step, loss in enumerate(losses, start=1):
        index = int((step * batch - 1) // span)
        if index == len(windows):
            windows.append([])
        windows[index].append(loss)
    return windows if not windows or len(windows[-1]) * batch >= span else windows[:-1]  # only full windows


def print_table(report: dict) -> None:
    header = f"{'variant':<22} {'batch':>5} {'s/step':>7} {'samples/s':>9} {'tokens/s':>8} {'MFU':>6} {'GiB':>6}"
    print(header)
    for name, run in report["variants"].items():
        if "error" in run:
            print(f"{name:<22} failed: {run['error']}")
            continue
        print(
            f"{name:<22} {run['batch']:>5.0f} {run['seconds_per_step']:>7.3f} {run['samples_per_s']:>9.2f} "
            f"{run['tokens_per_s']:>8} {run.get('mfu', float('nan')):>6.3f} {run.get('peak_gpu_memory_gib', 0):>6.1f}"
        )
        print("    " + "  ".join(f"{p} {share:.0%}" for p, share in run["phases_share"].items()))
    for name, curve in report.get("loss_curves", {}).items():
        worst = max((abs(w["difference"]) for w in curve["windows"]), default=float("nan"))
        print(
            f"loss {name} vs reference, by {curve['by']}: largest window difference {worst:.4f}, "
            f"within 2 SE: {curve['within_two_standard_errors']}"
        )


def _parameters(base: Path) -> dict:
    """The base model's parameter counts as base_model.py recorded them (absent for a linked model)."""
    meta = base / "vlqc_base_model.json"
    return read_json(meta).get("parameters", {}) if meta.is_file() else {}


if __name__ == "__main__":
    main()
