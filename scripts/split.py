"""Seeded ticket-level train/val split and tiny subsets (rule split_dataset).

Settings: the `convert` config section (val_fraction, split_seed, tiny_train, tiny_val).
"""

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.data.dataset import write_splits


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="convert")
    parser.add_argument("--samples", type=Path, required=True, help="all_samples.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="folder of train/val/train_tiny/val_tiny.jsonl")
    return parser


def run(args: argparse.Namespace) -> dict:
    s = args.settings
    return write_splits(args.samples, args.out, s["val_fraction"], s["split_seed"], s["tiny_train"], s["tiny_val"])


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
