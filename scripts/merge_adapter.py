"""Merge a LoRA checkpoint into its base (or copy a full one) as a plain transformers folder (rule merge_adapter)."""

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.train.merge import merge_checkpoint


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="ms-swift checkpoint folder")
    parser.add_argument("--base", type=Path, required=True, help="base model folder")
    parser.add_argument("--out", type=Path, required=True, help="merged model folder")
    return parser


def run(args: argparse.Namespace) -> dict:
    return {"merged": str(merge_checkpoint(args.checkpoint, args.base, args.out))}


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
