"""Token-weighted eval loss of one checkpoint on the eval set: overall, per length bucket and per mode.

The checkpoint is a step folder (a full model, or a LoRA adapter on --base); rows are encoded as
the run's training encodes them (docs/evaluation.md#eval-loss). Settings: eval.batch_size.

Example:
    python scripts/eval_loss.py --checkpoint results/train/sft/demo/steps/step_200 \
        --base results/train/base/tiny --config config/train/demo.yaml \
        --split results/eval/demo/split_seed17_eval96.json --images results/data/demo \
        --step 200 --out results/train/sft/demo/eval_loss/step_200.json --settings '{}'
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vlqc import cli
from vlqc.evaluation.candidates import worded
from vlqc.evaluation.loss import Scorer, checkpoint_arguments, load_row_images, summarize
from vlqc.jsonl import read_json, write_json
from vlqc.train.config import load_train_config, prompt_config


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="eval")
    checkpoint_arguments(parser)
    parser.add_argument("--split", type=Path, required=True, help="eval set JSON (scripts/eval_split.py)")
    parser.add_argument("--step", type=int, help="training step of the checkpoint, recorded in the output")
    parser.add_argument("--out", type=Path, required=True, help="eval loss JSON")
    return parser


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    cfg = load_train_config(args.config)
    # Worded by the run's prompts section: the checkpoint is scored on the prompts it was trained with.
    rows = worded(read_json(args.split, "eval_split")["rows"], prompt_config(cfg))
    scorer = Scorer(args.checkpoint, args.base, cfg)
    images = load_row_images(rows, args.images, scorer.max_pixels, scorer.factor)
    losses = scorer.row_losses(rows, images, args.settings["batch_size"])
    doc = summarize(losses) | {
        "step": args.step,
        "checkpoint": str(args.checkpoint),
        "split": str(args.split),
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(args.out, doc, schema="eval_loss")
    return doc


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
