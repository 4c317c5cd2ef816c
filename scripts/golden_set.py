"""Draw the golden set of a dataset from its eval candidates (rule golden_set).

Rows balanced across length buckets, drawn with eval.golden_seed (docs/evaluation.md#golden-set-and-dumps).
Settings: eval.golden_seed; --rows is the N of golden<N>.jsonl.

Example:
    python scripts/golden_set.py --candidates results/eval/demo/candidates.jsonl --rows 64 \
        --out results/eval/demo/golden64.jsonl --settings '{}'
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from vlqc import cli
from vlqc.evaluation.golden import golden_set
from vlqc.jsonl import read_jsonl, write_jsonl


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="eval")
    parser.add_argument(
        "--candidates", type=Path, required=True, help="eval candidates JSONL (scripts/eval_candidates.py)"
    )
    parser.add_argument("--rows", type=int, required=True, help="rows of the golden set")
    parser.add_argument("--out", type=Path, required=True, help="golden set JSONL")
    return parser


def run(args: argparse.Namespace) -> dict:
    candidates = list(read_jsonl(args.candidates, "eval_row"))
    rows = golden_set(candidates, args.rows, args.settings["golden_seed"], str(args.candidates))
    write_jsonl(args.out, rows, schema="golden_row")
    return {
        "rows": len(rows),
        "by_bucket": dict(Counter(row["bucket"] for row in rows)),
        "by_mode": dict(Counter(row["mode"] for row in rows)),
    }


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
