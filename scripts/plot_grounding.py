"""Grounding plot of one run (rule plot_grounding; docs/evaluation.md#grounding).

Example:
    python scripts/plot_grounding.py --run demo --grounding results/train/sft/demo/grounding/step_253.json \
        --out results/plots/train/demo/grounding.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.report.grounding import plot_grounding


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__)
    parser.add_argument("--run", required=True)
    parser.add_argument("--grounding", type=Path, required=True, help="grounding/step_<S>.json of the last step")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    return parser


def run(args: argparse.Namespace) -> dict:
    return plot_grounding(args.grounding, args.out, args.run)


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
