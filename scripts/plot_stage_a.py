"""Stage-A throughput and failures by reason, per mission (rule plot_stage_a).

Example:
    python scripts/plot_stage_a.py --out results/plots/stage_a/summary.png \
        results/stage_a/挡风板安装检查/stats.json results/stage_a/BBU接地线检查/stats.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.report.stage_a import plot_stage_a


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__)
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("stats", type=Path, nargs="*", help="results/stage_a/<mission>/stats.json of each mission")
    return parser


def run(args: argparse.Namespace) -> dict:
    return plot_stage_a(args.stats, args.out)


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
