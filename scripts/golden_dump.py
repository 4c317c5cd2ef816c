"""What one saved checkpoint answers to the golden set, decoded with fixed settings (rule golden_dump).

The checkpoint is a step folder (a full model, or a LoRA adapter on --base); images are fitted to the
run's pixel cap as training fits them (docs/evaluation.md#golden-set-and-dumps). The same checkpoint,
golden set and settings give the same file. Settings: eval.golden_decoding.

Example:
    python scripts/golden_dump.py --checkpoint results/train/sft/demo/steps/step_253 \
        --base results/train/base/tiny --config config/train/demo.yaml \
        --golden results/eval/demo/golden64.jsonl --images results/data/demo \
        --out results/train/sft/demo/qual/step_253_golden64.jsonl --settings '{}'
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vlqc import cli
from vlqc.errors import VlqcError
from vlqc.evaluation.golden import dump_checkpoint
from vlqc.evaluation.loss import checkpoint_arguments
from vlqc.jsonl import read_jsonl, write_jsonl
from vlqc.train.config import load_train_config


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="eval.golden_decoding")
    checkpoint_arguments(parser)
    parser.add_argument("--golden", type=Path, required=True, help="golden set JSONL (scripts/golden_set.py)")
    parser.add_argument("--out", type=Path, required=True, help="golden dump JSONL")
    return parser


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    if not args.checkpoint.is_dir():
        saved = sorted(p.name for p in args.checkpoint.parent.glob("step_*")) if args.checkpoint.parent.is_dir() else []
        raise VlqcError(f"{args.checkpoint}: no such checkpoint folder (saved: {', '.join(saved) or 'none'})")
    golden = list(read_jsonl(args.golden, "golden_row"))
    rows = dump_checkpoint(
        args.checkpoint, args.base, load_train_config(args.config), golden, args.images, args.settings
    )
    write_jsonl(args.out, rows, schema="golden_dump_row")
    return {
        "rows": len(rows),
        "exact": sum(row["pred_text"] == row["gt_text"] for row in rows),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
