"""Summarise a sweep: one row per point in summary.csv and the best point in winner.json (rule sweep_summary).

Settings: `{"<sweep>": <the sweeps.<sweep> entry>}`. Reads each point's eval_loss.json, ablation.json and
logging.jsonl under --root (docs/evaluation.md#sweeps).

Example:
    python scripts/sweep_summary.py --sweep demo --root results/sweeps/demo --settings '{"demo": {…}}' \
        --summary results/sweeps/demo/summary.csv --winner results/sweeps/demo/winner.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.errors import VlqcError
from vlqc.evaluation.sweep import write_summary


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="sweeps")
    parser.add_argument("--sweep", required=True, help="the sweep's name (a key of the settings)")
    parser.add_argument("--root", type=Path, required=True, help="the sweep's folder, one subfolder per point")
    parser.add_argument("--summary", type=Path, required=True, help="summary.csv to write")
    parser.add_argument("--winner", type=Path, required=True, help="winner.json to write")
    return parser


def run(args: argparse.Namespace) -> dict:
    if args.sweep not in args.settings:
        raise VlqcError(f"--settings has no sweep {args.sweep!r}: {', '.join(args.settings) or 'none'}")
    best = write_summary(args.sweep, args.settings[args.sweep], args.root, args.summary, args.winner)
    return {"winner": best["point"], "score": best["score"], "summary": str(args.summary)}


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
