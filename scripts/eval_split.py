"""Draw the eval set of a dataset: N candidates balanced across length buckets, drawn with a seed.

The file is written once and every checkpoint and sweep point is evaluated on it
(docs/evaluation.md#the-eval-set). Seed and N are wildcards of the output name; the setting
eval.len_buckets is checked against the candidates' buckets.

Example:
    python scripts/eval_split.py --candidates results/eval/demo/candidates.jsonl --dataset demo --seed 17 \
        --rows 96 --out results/eval/demo/split_seed17_eval96.json --settings '{}'
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.evaluation.candidates import ROW_SCHEMA, draw_split
from vlqc.jsonl import read_jsonl, write_json


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="eval")
    parser.add_argument("--candidates", type=Path, required=True, help="eval candidates JSONL")
    parser.add_argument("--dataset", required=True, help="dataset name (recorded in the file)")
    parser.add_argument("--seed", type=int, required=True, help="seed of the draw (wildcard)")
    parser.add_argument("--rows", type=int, required=True, help="N, rows of the eval set (wildcard)")
    parser.add_argument("--out", type=Path, required=True, help="eval set JSON")
    return parser


def run(args: argparse.Namespace) -> dict:
    candidates = list(read_jsonl(args.candidates, ROW_SCHEMA))
    split = draw_split(
        candidates, args.rows, args.seed, args.settings["len_buckets"], args.dataset, str(args.candidates)
    )
    write_json(args.out, split, schema="eval_split")
    return {key: split[key] for key in ("rows_requested", "bucket_counts", "mode_counts", "candidates")}


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
