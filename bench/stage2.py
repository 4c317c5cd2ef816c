"""Stage-2 AB training speed: seconds per channel-A and channel-B step, and the rollouts' share and tokens/s.

One Stage-2 AB run through `vlqc.train.run.train` (the `train_stage2` path: over-length check, length gate,
`torchrun -m vlqc.train.stage2.main`) with bench/train_timing.py loaded as an ms-swift plugin, as
bench/train.py runs SFT. `b_ratio` is 0.5 (`--b-ratio`); rollout dumps are off. The steps after the first
`--warmup` are split by channel with the trainer's `stage2_ab/channel_b` of each step in logging.jsonl; per
channel the report holds bench/train.py's summary over its steady steps (seconds per step, samples/s,
tokens/s, the phase profile) and for channel B the trainer's rollout metrics: seconds generating and
building, generated tokens per second and per row, the fall-back rate and its reasons, truncation and
matching. The base model is given directly (`--base`): a Stage-2 run's `init_from` matters only to Snakemake.

Where a B step's time goes: the rollout runs in the trainer's `get_batch_samples`, before the step's first
callback, so train_timing.py books it under `data`; the other phases are the training step on the built
sequences.

CPU (default): the tiny model on the Stage-2 demo's dense rows, config/train/stage2_demo.yaml for 12 steps
(2 warm-up); writes bench/results/stage2_cpu.json. Build first:

    snakemake -c2 results/train/base/tiny results/data/demo/train.jsonl   # or the demo pipeline's run
    python scripts/sft_dataset.py --train results/data/demo/train.jsonl --val \\
        --config config/train/stage2_demo.yaml --missions config/missions.yaml --out results/bench/stage2_cpu_data
    python bench/stage2.py

GPU (`--gpus 1`): LoRA on the Qwen3-VL-2B-shaped random-weight model in bf16 with Liger, dense rows at the
786432-pixel cap, batch 8, rollouts of up to 256 tokens (bench/configs/stage2_gpu_2b.yaml). Random weights
never write the dense header, so every B row falls back to channel A: a B step measures the rollout plus an
A-like training step (the report says so). The data folder is built where the canonical demo data is and
carried as a tarball; the model is built on the GPU machine:

    python scripts/sft_dataset.py --train results/data/demo/train.jsonl --val \\
        --config bench/configs/stage2_gpu_2b.yaml --missions config/missions.yaml \\
        --out results/bench/stage2_gpu_data
    tar czf .bench/stage2_gpu_data.tar.gz -C results/bench stage2_gpu_data
    # on the GPU machine, one command:
    mkdir -p results/bench && tar xzf .bench/stage2_gpu_data.tar.gz -C results/bench && \\
    python scripts/base_model.py --settings "{\\"sizes\\": $(cat bench/configs/qwen3_vl_2b_sizes.json)}" \\
        --out results/train/base/qwen3_vl_2b && \\
    python bench/stage2.py --gpus 1 --steps 16 --warmup 4 --time-limit 300

`--backend server` runs the same with `stage2_ab.rollout.backend: server`, on a rollout server this script
starts on the base model (`python -m vlqc.train.stage2.rollout_server`, `--max_batch_size 0`; on a GPU run it
shares the learner's card) and reports its start-up; default output `stage2_{cpu,gpu}_server.json`. B steps
then include the adapter sync (`time/rollout_sync_s`).

`--time-limit` (GPU default 300 s) bounds the training call (not the GPU ceilings measured before it,
~10 s): past `limit − STOP_RESERVE_S` the run stops after its current step and saves (a callback of this
file, loaded as a second plugin), and at the limit every process it started is killed. A run stopped early
reports the steps it ran (`stopped_by_time_guard`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from machine import repo_path  # bench/machine.py, beside this script
from swift.callbacks import TrainerCallback, callbacks_map
from train import PLUGIN as TIMING_PLUGIN
from train import _parameters, machine, read_run, step_flops, summarize, timed_scratch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the harness the tests use: tests/support

from support.swift_deploy import swift_deploy  # noqa: E402

from vlqc.errors import VlqcError
from vlqc.jsonl import write_json
from vlqc.train.run import train
from vlqc.train.stage2.trainer import FALLBACKS

REPO = Path(__file__).resolve().parents[1]
SERVER_MODULE = "vlqc.train.stage2.rollout_server"
STOP_AT_ENV = "VLQC_BENCH_STOP_AT"  # wall-clock time (epoch seconds) after which the run stops stepping
STOP_RESERVE_S = 45  # the time-guarded run's last save and exit
CHANNEL_KEY = "stage2_ab/channel_b"
# The trainer's B-step metrics (vlqc/train/stage2/trainer.py): means over a step's micro-batches.
ROLLOUT_MEANS = (
    "time/rollout_sync_s",
    "time/rollout_generate_s",
    "time/rollout_build_s",
    "rollout/gen_tokens_per_s",
    "rollout/gen_tokens_mean",
    "rollout/fallback_rate",
    "rollout/parse_truncated_rate",
    "rollout/match_precision",
    "rollout/match_recall",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="default: stage2_demo.yaml / stage2_gpu_2b.yaml")
    parser.add_argument("--base", type=Path, default=None, help="default: results/train/base/{tiny,qwen3_vl_2b}")
    parser.add_argument("--data", type=Path, default=None, help="default: results/bench/stage2_{cpu,gpu}_data")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="first steps reported apart from the steady ones")
    parser.add_argument("--b-ratio", type=float, default=0.5)
    parser.add_argument("--gpus", type=int, default=0, help="0: CPU (gloo, one process); else 1")
    parser.add_argument(
        "--backend", choices=("hf", "server"), default="hf", help="server: on a rollout server this script starts"
    )
    parser.add_argument("--time-limit", type=float, default=None, help="seconds; default 300 on a GPU, none on CPU")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/stage2_{cpu,gpu}.json")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} leaves no steady steps after --warmup {args.warmup}")
    if args.gpus > 1:
        parser.error("--gpus: one GPU (the per-channel split reads one rank's steps)")
    gpu = args.gpus > 0
    kind = "gpu" if gpu else "cpu"
    config = args.config or REPO / ("bench/configs/stage2_gpu_2b.yaml" if gpu else "config/train/stage2_demo.yaml")
    base = args.base or REPO / f"results/train/base/{'qwen3_vl_2b' if gpu else 'tiny'}"
    data = args.data or REPO / f"results/bench/stage2_{kind}_data"
    limit = args.time_limit if args.time_limit is not None else (300.0 if gpu else None)
    if limit is not None and limit <= STOP_RESERVE_S:
        parser.error(f"--time-limit {limit} leaves no time to step before the {STOP_RESERVE_S} s kept for the end")
    out = args.out or REPO / f"bench/results/stage2_{kind}{'_server' if args.backend == 'server' else ''}.json"
    host = machine(gpu)
    if gpu:
        import torch

        torch.cuda.empty_cache()  # the ceilings' buffers: this process holds no more than its context in training

    report: dict[str, Any] = {
        "benchmark": f"stage2_{kind}",
        "config": repo_path(config),
        "base": repo_path(base),
        "base_parameters": _parameters(base),
        "data": repo_path(data),
        "steps_asked": args.steps,
        "warmup_steps": args.warmup,
        "b_ratio": args.b_ratio,
        "backend": args.backend,
        "time_limit_s": limit,
        "machine": host,
        # Other work on the machine slows a CPU run: the 1/5/15-minute load averages when it started.
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "notes": [
            "A B step's rollout runs in the trainer's get_batch_samples, before the step's first callback: "
            "train_timing.py books it under the `data` phase.",
            "Rollout metrics are the trainer's means over a step's micro-batches.",
        ],
    }
    try:
        report.update(run_stage2(config, base, data, args, gpu, limit, report["machine"]))
    except VlqcError as exc:
        report["error"] = str(exc)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(out, report)
    print_table(report)
    if "error" in report:
        raise SystemExit(f"bench/stage2.py: {report['error']} (the report is in {out})")


def run_stage2(
    config: Path, base: Path, data: Path, args: argparse.Namespace, gpu: bool, limit: float | None, host: dict
) -> dict[str, Any]:
    overlay_doc = {
        "extends": str(config.resolve()),
        "training": {"max_steps": args.steps, "save_steps": args.steps, "logging_steps": 1},
        "stage2_ab": {"b_ratio": args.b_ratio, "dump": {"every": 0}},
    }
    plugins = ["--external_plugins", str(TIMING_PLUGIN)]
    callbacks = ["--callbacks", "vlqc_step_timing"]
    with rollout_backend(args.backend, base, overlay_doc) as served, timed_scratch(overlay_doc) as scratch:
        started = time.perf_counter()
        guard, fired = None, threading.Event()
        if limit is not None:
            os.environ[STOP_AT_ENV] = str(time.time() + limit - STOP_RESERVE_S)
            plugins.append(str(Path(__file__).resolve()))
            callbacks.append("vlqc_stop_at")
            guard = threading.Timer(limit, _kill_children, args=(fired,))
            guard.daemon = True
            guard.start()
        try:
            train(
                scratch / "bench.yaml",
                base,
                data,
                scratch / "run",
                nproc=1,
                gpus=args.gpus,
                threads=os.cpu_count() or 1,
                extra_args=[*plugins, *callbacks],
            )
        except VlqcError as exc:
            if fired.is_set():
                raise VlqcError(f"killed by the {limit:.0f} s time guard before the run ended ({exc})") from exc
            raise
        finally:
            if guard is not None:
                guard.cancel()
        wall = time.perf_counter() - started
        timing, logged, resolved = read_run(scratch)
        logging_path = scratch / "run/logging.jsonl"
    flops = step_flops(base, resolved) if gpu else None
    accumulation = resolved["training"]["gradient_accumulation_steps"]
    result = {
        **served,
        "batch_per_device": resolved["training"]["per_device_train_batch_size"],
        "gradient_accumulation_steps": accumulation,
        "max_new_tokens": resolved["stage2_ab"]["rollout"]["max_new_tokens"],
        "steps_run": len(timing["steps"]),
        "stopped_by_time_guard": len(timing["steps"]) < args.steps,
        **summarize_channels(
            timing, logged, args.warmup, accumulation, flops, host.get("bf16_flop_per_s"), str(logging_path)
        ),
        "train_runtime_s": next(row["train_runtime"] for row in logged if "train_runtime" in row),
        "wall_with_startup_s": round(wall, 1),
    }
    if result["channels"]["b"].get("rollout", {}).get("rollout/fallback_rate") == 1.0:
        result["notes_run"] = [
            "Every B row fell back to channel A (reasons under channels.b.rollout.fallbacks): a B step here is "
            "the rollout plus an A-like training step on the row's own target."
        ]
    return result


@contextmanager
def rollout_backend(backend: str, base: Path, overlay_doc: dict) -> Iterator[dict[str, Any]]:
    """For `server`: a rollout server on `base` while the block runs, named in `overlay_doc`'s rollout section,
    and the report's `server` entry; for `hf`, nothing."""
    if backend == "hf":
        yield {}
        return
    # The base model served as the learner starts from it; a batch's rollouts generated together.
    with tempfile.TemporaryDirectory(prefix="vlqc-rollout-") as folder:
        with swift_deploy(base, Path(folder), max_batch_size=0, module=SERVER_MODULE) as server:
            url = server.base_url.removesuffix("/v1")
            overlay_doc["stage2_ab"]["rollout"] = {"backend": "server", "server": {"url": url}}
            yield {"server": {"module": SERVER_MODULE, "max_batch_size": 0, "startup_s": round(server.startup_s, 1)}}


# --- pure parts (tests/test_bench_stage2.py) ----------------------------------------------------------


def step_channels(logged: list[dict], source: str) -> dict[int, str]:
    """Optimizer step (1-based, as ms-swift logs it) → "a" or "b", from the trainer's per-step log rows."""
    channels = {}
    for row in logged:
        if CHANNEL_KEY in row:
            step = int(row["global_step/max_steps"].split("/")[0])
            channels[step] = "b" if row[CHANNEL_KEY] else "a"
    if not channels:
        raise VlqcError(f"{source}: no row has {CHANNEL_KEY}: not a Stage-2 AB run, or logging_steps is not 1")
    return channels


def step_walls(timing: dict) -> list[float]:
    """Each step's wall seconds: from the previous step's end (the run's start for the first) to its own end."""
    ends = [timing["began_at"]] + [s["ended_at"] for s in timing["steps"]]
    return [b - a for a, b in zip(ends, ends[1:])]


def laid_end_to_end(steps: list[dict], walls: list[float]) -> dict:
    """A timing record of `steps` alone, their walls laid end to end, in the form summarize() reads."""
    now, laid = 0.0, []
    for step, wall in zip(steps, walls):
        now += wall
        laid.append({**step, "ended_at": now})
    return {"began_at": 0.0, "steps": laid}


def rollout_summary(rows: list[dict], seconds_per_step: float, accumulation: int) -> dict[str, Any]:
    """Channel B's rollout metrics over its steady steps' log rows: means of the trainer's per-step means,
    fall-back counts by reason, and the rollout's share of a B step."""
    summary: dict[str, Any] = {}
    for key in ROLLOUT_MEANS:
        values = [row[key] for row in rows if key in row]
        if values:
            summary[key] = round(statistics.mean(values), 4)
    summary["fallbacks"] = {
        key.removeprefix(FALLBACKS): sum(row[key] for row in rows if key in row)
        for key in sorted({k for row in rows for k in row})
        if key.startswith(FALLBACKS)
    }
    if "time/rollout_generate_s" in summary:
        # The trainer times each micro-batch's rollout, a step holds `accumulation` of them; a server's adapter
        # sync is once a step.
        per_step = (summary["time/rollout_generate_s"] + summary.get("time/rollout_build_s", 0.0)) * accumulation
        per_step += summary.get("time/rollout_sync_s", 0.0)
        summary["rollout_seconds_per_step"] = round(per_step, 4)
        summary["rollout_share"] = round(per_step / seconds_per_step, 3)
    return summary


def summarize_channels(
    timing: dict,
    logged: list[dict],
    warmup: int,
    accumulation: int,
    flops: Any = None,
    peak_flop_per_s: float | None = None,
    source: str = "logging.jsonl",
) -> dict[str, Any]:
    """The run's steps split by channel: the warm-up steps apart, then bench/train.py's summary of each
    channel's steady steps (their walls laid end to end) and, for B, the rollout metrics."""
    channels = step_channels(logged, source)
    walls = step_walls(timing)
    missing = [s["step"] for s in timing["steps"] if s["step"] not in channels]
    if missing:
        raise VlqcError(f"{source}: no {CHANNEL_KEY} logged for steps {missing}")
    rows_by_step = {int(r["global_step/max_steps"].split("/")[0]): r for r in logged if CHANNEL_KEY in r}
    per_step = [
        {
            "step": s["step"],
            "channel": channels[s["step"]].upper(),
            "seconds": round(wall, 4),
            "data_seconds": round(s["data"], 4),
            "loss": rows_by_step[s["step"]].get("loss"),
        }
        for s, wall in zip(timing["steps"], walls)
    ]
    result: dict[str, Any] = {"steps": per_step, "channels": {}}
    for channel in ("a", "b"):
        chosen = [i for i in range(warmup, len(walls)) if channels[timing["steps"][i]["step"]] == channel]
        if not chosen:
            result["channels"][channel] = {"steady_steps": 0}
            continue
        laid = laid_end_to_end([timing["steps"][i] for i in chosen], [walls[i] for i in chosen])
        summary = summarize(laid, 0, flops, peak_flop_per_s)
        del summary["first_steps_seconds"]  # the run's warm-up steps are reported once, with their channels
        summary["steps"] = [timing["steps"][i]["step"] for i in chosen]
        if channel == "b":
            rows = [rows_by_step[timing["steps"][i]["step"]] for i in chosen]
            summary["rollout"] = rollout_summary(rows, summary["seconds_per_step"], accumulation)
        result["channels"][channel] = summary
    realized = [row["stage2_ab/b_ratio_realized"] for row in logged if "stage2_ab/b_ratio_realized" in row]
    result["b_ratio_realized"] = realized[-1] if realized else None
    if timing["steps"] and timing["steps"][0]["peak_memory_gib"] is not None:
        result["peak_gpu_memory_gib"] = round(max(s["peak_memory_gib"] for s in timing["steps"]), 2)
    return result


def print_table(report: dict) -> None:
    if "error" in report:
        print(f"stage2 bench failed: {report['error']}")
        return
    print(
        f"{'channel':<8} {'steps':>5} {'s/step':>7} {'samples/s':>9} {'tokens/s':>8} "
        f"{'rollout s':>9} {'share':>6} {'gen tok/s':>9} {'gen tok':>7} {'fallback':>8}"
    )
    nan = float("nan")
    for name, run in report["channels"].items():
        if not run["steady_steps"]:
            print(f"{name.upper():<8} no steady steps")
            continue
        roll = run.get("rollout", {})
        print(
            f"{name.upper():<8} {run['steady_steps']:>5} {run['seconds_per_step']:>7.3f} {run['samples_per_s']:>9.2f} "
            f"{run['tokens_per_s']:>8} {roll.get('rollout_seconds_per_step', nan):>9.3f} "
            f"{roll.get('rollout_share', nan):>6.1%} {roll.get('rollout/gen_tokens_per_s', nan):>9.1f} "
            f"{roll.get('rollout/gen_tokens_mean', nan):>7.1f} {roll.get('rollout/fallback_rate', nan):>8.1%}"
        )
        print("    " + "  ".join(f"{p} {share:.0%}" for p, share in run["phases_share"].items()))
    print(
        f"steps run {report['steps_run']} of {report['steps_asked']} (warm-up {report['warmup_steps']}), "
        f"b_ratio realized {report['b_ratio_realized']}, peak GPU memory {report.get('peak_gpu_memory_gib', '-')} GiB"
    )
    for note in report["notes"] + report.get("notes_run", []):
        print("note: " + note)


# --- the time guard -------------------------------------------------------------------------------------


class StopAt(TrainerCallback):
    """Loaded into the training process as a plugin: past $VLQC_BENCH_STOP_AT the run ends after the
    current step, saving as at its last step (the run's checkpoint is an output train() expects)."""

    def on_step_end(self, args, state, control, **kwargs):
        if time.time() >= float(os.environ[STOP_AT_ENV]):
            control.should_training_stop = True
            control.should_save = True


callbacks_map["vlqc_stop_at"] = StopAt


def _kill_children(fired: threading.Event) -> None:
    """The hard limit: every process this one started (torchrun and its worker) is ended."""
    fired.set()
    children = psutil.Process().children(recursive=True)
    for child in children:
        child.terminate()
    _, alive = psutil.wait_procs(children, timeout=15)
    for child in alive:
        child.kill()


if __name__ == "__main__":
    main()
