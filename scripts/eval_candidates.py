"""Build the eval candidates of a dataset: a dense and a summary row per val photo, a verdict row per val ticket.

Rows are built as training builds them (docs/evaluation.md#the-eval-set); label_len counts the
assistant target with the base model's tokenizer. Settings: eval.len_buckets, eval.modes.

Example:
    python scripts/eval_candidates.py --val results/data/demo/val.jsonl --missions config/missions.yaml \
        --base results/train/base/tiny --out results/eval/demo/candidates.jsonl --settings '{}'
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.evaluation.buckets import BUCKETS
from vlqc.evaluation.candidates import ROW_SCHEMA, build_candidates, counts, token_counter
from vlqc.jsonl import read_jsonl, write_jsonl
from vlqc.missions import load_missions
from vlqc.train.sft_data import MODES


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="eval")
    parser.add_argument("--val", type=Path, required=True, help="canonical val split (its images/ beside it)")
    parser.add_argument("--missions", type=Path, required=True, help="missions file")
    parser.add_argument("--base", type=Path, required=True, help="base model folder (its tokenizer counts label_len)")
    parser.add_argument("--out", type=Path, required=True, help="candidates JSONL")
    return parser


def run(args: argparse.Namespace) -> dict:
    records = list(read_jsonl(args.val, "sample"))
    rows = build_candidates(
        records,
        load_missions(args.missions),
        token_counter(args.base),
        args.settings["len_buckets"],
        args.settings["modes"],
        args.val,
    )
    write_jsonl(args.out, rows, schema=ROW_SCHEMA)
    lengths = sorted(row["label_len"] for row in rows)
    return {
        "rows": len(rows),
        "by_bucket": counts(rows, "bucket", BUCKETS),
        "by_mode": counts(rows, "mode", MODES),
        "label_len": {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]} if rows else None,
    }


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
