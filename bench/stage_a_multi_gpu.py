"""Stage-A on the GPUs of one host: 1 against N ranks, per_group against per_image, on skewed groups.

Runs what the `stage_a_infer` rule runs (torchrun + scripts/stage_a_infer.py, one GPU a rank) on a synthetic
mission whose group sizes are skewed: they cycle through --group-sizes (default 1,12, so half the groups hold
one photo and half twelve), photos of the six sizes of bench/stage_a_gpu.py. per_group hands whole groups to
ranks, so on such a set one rank can get most of the images; per_image deals the images out one by one.

The model is stage_a_gpu.py's 4B-shaped one (random bf16 weights from its skeleton, engine fast), its
`generation_config.min_new_tokens` set to --new-tokens so that every image costs the same decode work; random
weights write no summary, so the rows are recorded failures (`unparseable_summary`), which costs nothing extra.
Each run starts without resume entries. Throughput is images over the slowest rank's seconds inside its
generate calls (what the ranks log as `generate_s`), so model loading does not count; a first, unrecorded run
fills the compile cache, so that the compilation inside each rank's first call takes seconds, not tens of them.
End-to-end seconds (process start to exit) are recorded too.

    python bench/stage_a_gpu.py make-skeleton results/bench/stage_a_gpu                  # here
    python bench/stage_a_multi_gpu.py --skeleton results/bench/stage_a_gpu --ranks 1,2   # on a 2-GPU host

Prints a table and writes bench/results/stage_a_multi_gpu.json. `--device cpu --checkpoint DIR` runs CPU ranks
(gloo) on an existing checkpoint instead, to try the script without a GPU.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from transformers import GenerationConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from gpu import gpu_info  # noqa: E402 (beside this script)
from stage_a_gpu import PROMPT_FILE, build_model_folder, numbers, photos  # noqa: E402
from stage_a_launch import launch, log_of  # noqa: E402

from vlqc.stage_a.discover import Group  # noqa: E402
from vlqc.stage_a.jobs import SHARDING_MODES, write_selection  # noqa: E402

# The counts each rank prints as it ends (scripts/stage_a_infer.py, vlqc.cli); progress bars may share the line.
RANK_COUNTS = re.compile(r"rank (\d+): (\{[^\n]*\})")


def skewed_groups(root: Path, mission: str, images: int, sizes: list[int]) -> list[Group]:
    """Groups whose sizes cycle through `sizes` until `images` photos are written (the last group may be cut)."""
    pictures = photos()
    groups: list[Group] = []
    written = 0
    while written < images:
        seq = len(groups)
        size = min(sizes[seq % len(sizes)], images - written)
        group_id = f"SKEW-{seq:05d}"
        folder = root / mission / "审核通过" / group_id
        folder.mkdir(parents=True)
        paths = []
        for index in range(1, size + 1):
            path = folder / f"{group_id}_{index}.jpg"
            pictures[(written + index) % len(pictures)].save(path, quality=90)
            paths.append(path)
        groups.append(Group(seq, mission, "pass", group_id, folder, tuple(paths)))
        written += size
    return groups


def forced_tokens_model(skeleton: Path, work: Path, new_tokens: int) -> Path:
    """stage_a_gpu.py's model folder, generating exactly `new_tokens` tokens an image."""
    folder = build_model_folder(skeleton, work)
    config = GenerationConfig.from_pretrained(folder)
    config.min_new_tokens = new_tokens
    config.save_pretrained(folder)
    return folder


def run_once(work: Path, args: argparse.Namespace, checkpoint: Path, ranks: int, mode: str) -> dict[str, Any]:
    out = work / f"{mode}.{ranks}"
    settings = {
        "engine": args.engine,
        "batch_size": args.batch_size,
        "max_new_tokens": args.new_tokens,
        "max_pixels": args.max_pixels,
        **args.settings,
    }
    wall, rows = launch(
        work / "selection.jsonl",
        out,
        mission=args.mission,
        checkpoint=checkpoint,
        mode=mode,
        ranks=ranks,
        settings=settings,
        gpus=ranks if args.device == "cuda" else 0,
    )
    log = log_of(out)
    counts = {int(rank): json.loads(text) for rank, text in RANK_COUNTS.findall(log.read_text(encoding="utf-8"))}
    if sorted(counts) != list(range(ranks)):
        raise SystemExit(f"{log}: expected the counts of ranks 0..{ranks - 1}, found ranks {sorted(counts)}")
    slowest = max(c["generate_s"] for c in counts.values())
    return {
        "ranks": ranks,
        "mode": mode,
        "images": len(rows),
        "generated": sum(c["generated"] for c in counts.values()),
        "rank_images": [counts[r]["images"] for r in range(ranks)],
        "rank_generate_s": [counts[r]["generate_s"] for r in range(ranks)],
        "images_per_s": round(len(rows) / slowest, 2),
        "end_to_end_s": round(wall, 1),
        "end_to_end_images_per_s": round(len(rows) / wall, 2),
    }


def comparisons(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Speed-up of the most ranks over the fewest in each mode, and per_image over per_group at the most ranks."""
    speed = {(r["mode"], r["ranks"]): r["images_per_s"] for r in runs}
    fewest, most = min(r["ranks"] for r in runs), max(r["ranks"] for r in runs)
    result = {
        f"{mode}_speedup_{most}_over_{fewest}": round(speed[mode, most] / speed[mode, fewest], 2)
        for mode in SHARDING_MODES
    }
    result[f"per_image_over_per_group_at_{most}"] = round(speed["per_image", most] / speed["per_group", most], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--skeleton", type=Path, help="stage_a_gpu.py's skeleton: build its 4B-shaped model")
    model.add_argument("--checkpoint", type=Path, help="an existing checkpoint, used as it is")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: gloo ranks")
    parser.add_argument("--ranks", type=numbers, default=[1, 2], help="rank counts to compare (GPUs with cuda)")
    parser.add_argument("--images", type=int, default=1536)
    parser.add_argument("--group-sizes", type=numbers, default=[1, 12])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--engine", default="fast")
    parser.add_argument("--batch-size", type=int, default=512, help="stage_a.batch_size: images per generate call")
    parser.add_argument("--max-pixels", type=int, help="default: the skeleton prompt's pixel budget")
    parser.add_argument("--mission", default="挡风板安装检查")
    parser.add_argument("--settings", type=json.loads, default={}, help="more Stage-A settings, a JSON object")
    parser.add_argument("--work", type=Path, help="where model, photos and rank files go (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/stage_a_multi_gpu.json")
    args = parser.parse_args()
    if args.skeleton and args.max_pixels is None:
        args.max_pixels = json.loads((args.skeleton / PROMPT_FILE).read_text(encoding="utf-8"))["max_pixels"]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        checkpoint = args.checkpoint or forced_tokens_model(args.skeleton, work / "model", args.new_tokens)
        groups = skewed_groups(work / "tickets", args.mission, args.images, args.group_sizes)
        write_selection(work / "selection.jsonl", groups[:2])
        run_once(work, args, checkpoint, 1, "per_image")  # warm-up: fills the compile cache
        write_selection(work / "selection.jsonl", groups)
        runs = [run_once(work, args, checkpoint, ranks, mode) for mode in SHARDING_MODES for ranks in args.ranks]
    report = {
        "benchmark": "stage_a_multi_gpu",
        "device": gpu_info() if args.device == "cuda" else "cpu",
        "checkpoint": str(args.checkpoint) if args.checkpoint else f"4B-shaped from {args.skeleton}",
        "groups": len(groups),
        "group_sizes": args.group_sizes,
        "new_tokens": args.new_tokens,
        "engine": args.engine,
        "batch_size": args.batch_size,
        "max_pixels": args.max_pixels,
        "settings": args.settings,
        "runs": runs,
        "comparisons": comparisons(runs),
    }
    print(f"{'mode':<10} {'ranks':>5} {'images':>6} {'rank images':>16} {'img/s':>7} {'end-to-end s':>12}")
    for r in runs:
        print(
            f"{r['mode']:<10} {r['ranks']:>5} {r['images']:>6} {str(r['rank_images']):>16} "
            f"{r['images_per_s']:>7.2f} {r['end_to_end_s']:>12}"
        )
    print(json.dumps(report["comparisons"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
