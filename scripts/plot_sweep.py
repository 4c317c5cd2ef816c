"""Sweep table and heatmap from results/sweeps/<sweep>/summary.csv (rules plot_sweep_table, plot_sweep_heatmap).

The axes are the sweep's dotted training-config keys, in config order: the heatmap puts the first
one down and the others' combinations across.

Example:
    python scripts/plot_sweep.py heatmap --sweep demo --summary results/sweeps/demo/summary.csv \
        --winner results/sweeps/demo/winner.json --axes tuner.learning_rate tuner.train_vit_norms \
        --out results/plots/sweeps/demo/heatmap.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.report import sweeps


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__)
    parser.add_argument("plot", choices=("table", "heatmap"), help="table: HTML page; heatmap: PNG")
    parser.add_argument("--sweep", required=True)
    parser.add_argument("--summary", type=Path, required=True, help="the sweep's summary.csv")
    parser.add_argument("--winner", type=Path, required=True, help="the sweep's winner.json")
    parser.add_argument("--axes", nargs="+", required=True, help="the sweep's axes (summary.csv columns)")
    parser.add_argument("--out", type=Path, required=True)
    return parser


def run(args: argparse.Namespace) -> dict:
    plot = sweeps.write_table if args.plot == "table" else sweeps.plot_heatmap
    return plot(args.summary, args.winner, args.out, args.sweep, args.axes)


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
