"""Grounding metrics of one checkpoint: its dense answers to val photos matched to their objects and scored.

The checkpoint is a step folder (a full model, or a LoRA adapter on --base); the photos are a seeded draw
of the canonical val split, asked for their objects greedily (docs/evaluation.md#grounding). Writes the
metrics (--out, schema eval_grounding) and every answer with its parse outcome (--predictions, schema
eval_grounding_row). Settings: eval.grounding.

Example:
    python scripts/eval_grounding.py --checkpoint results/train/sft/demo/steps/step_253 \
        --base results/train/base/tiny --config config/train/demo.yaml \
        --val results/data/demo/val.jsonl --missions config/missions.yaml --images results/data/demo \
        --step 253 --out results/train/sft/demo/grounding/step_253.json \
        --predictions results/train/sft/demo/grounding/step_253.jsonl --settings '{}'
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vlqc import cli
from vlqc.evaluation.grounding import evaluate_checkpoint, select_photos
from vlqc.evaluation.loss import checkpoint_arguments
from vlqc.jsonl import read_jsonl, write_json, write_jsonl
from vlqc.missions import load_missions
from vlqc.train.config import load_train_config


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="eval.grounding")
    checkpoint_arguments(parser)
    parser.add_argument("--val", type=Path, required=True, help="canonical val split JSONL (schema sample)")
    parser.add_argument("--missions", type=Path, required=True, help="missions.yaml (a ticket photo's domain)")
    parser.add_argument("--step", type=int, help="training step of the checkpoint, recorded in the output")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--predictions", type=Path, required=True, help="answers JSONL, one row a photo")
    return parser


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    settings = args.settings
    records = list(read_jsonl(args.val, "sample"))
    photos, eligible = select_photos(
        records, load_missions(args.missions), settings["images"], settings["seed"], str(args.val)
    )
    metrics, rows = evaluate_checkpoint(
        args.checkpoint, args.base, load_train_config(args.config), photos, args.images, settings
    )
    doc = {
        "step": args.step,
        "checkpoint": str(args.checkpoint),
        "val": str(args.val),
        "seed": settings["seed"],
        "images_requested": settings["images"],
        "images_eligible": eligible,
        "max_new_tokens": settings["max_new_tokens"],
        **metrics,
    }
    write_jsonl(args.predictions, rows, schema="eval_grounding_row")
    write_json(args.out, doc, schema="eval_grounding")
    first = doc["overall"][0]
    return {
        "images": doc["images"],
        "iou_threshold": first["iou_threshold"],
        "f1": first["f1"],
        "parse_failure_rate": doc["parse"]["parse_failure_rate"],
        # Not in the metrics file: the same checkpoint and settings give the same file.
        "seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
