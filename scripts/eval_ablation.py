"""Image ablations of one checkpoint: eval loss of image rows with the correct, shuffled, black and noise images.

Rows: eval.ablation.rows image rows of the eval candidates (all if fewer), drawn with
eval.ablation.seed, which also seeds the derangement and the noise (docs/evaluation.md#image-ablations).
Settings: eval.batch_size, eval.ablation.

Example:
    python scripts/eval_ablation.py --checkpoint results/train/sft/demo/checkpoint --base results/train/base/tiny \
        --config config/train/demo.yaml --candidates results/eval/demo/candidates.jsonl \
        --images results/data/demo --out results/train/sft/demo/ablation.json --settings '{}'
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from vlqc import cli
from vlqc.errors import VlqcError
from vlqc.evaluation.ablation import VARIANTS, image_rows, report, variants
from vlqc.evaluation.candidates import ROW_SCHEMA, worded
from vlqc.evaluation.loss import Scorer, checkpoint_arguments, load_row_images, token_weighted
from vlqc.jsonl import read_jsonl, write_json
from vlqc.train.config import load_train_config, prompt_config

log = logging.getLogger("eval_ablation")


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="eval")
    checkpoint_arguments(parser)
    parser.add_argument("--candidates", type=Path, required=True, help="eval candidates JSONL")
    parser.add_argument("--out", type=Path, required=True, help="ablation JSON")
    return parser


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    settings = args.settings["ablation"]
    cfg = load_train_config(args.config)
    rows = image_rows(list(read_jsonl(args.candidates, ROW_SCHEMA)), settings["rows"], settings["seed"])
    rows = worded(rows, prompt_config(cfg))  # the run's own prompts (docs/prompts.md)
    scorer = Scorer(args.checkpoint, args.base, cfg)
    images = variants(
        load_row_images(rows, args.images, scorer.max_pixels, scorer.factor), settings["seed"], settings["noise_std"]
    )
    loss, tokens = {}, {}
    for variant in VARIANTS:
        losses = scorer.row_losses(rows, images[variant], args.settings["batch_size"], desc=f"ablation {variant}")
        loss[variant], tokens[variant] = token_weighted(losses), sum(r.tokens for r in losses)
    if len(set(tokens.values())) != 1:  # every variant image has the correct one's size: same sequences
        raise VlqcError(f"label tokens differ between variants: {tokens}")
    doc = report(loss) | {
        "rows": len(rows),
        "seed": settings["seed"],
        "noise_std": settings["noise_std"],
        "label_tokens": tokens["correct"],
        "checkpoint": str(args.checkpoint),
        "candidates": str(args.candidates),
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(args.out, doc, schema="eval_ablation")
    log.info("%s", doc["ordering"])
    return doc


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
