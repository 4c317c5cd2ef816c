"""Build the ms-swift SFT dataset (train.jsonl with the materialised epochs, val.jsonl) from canonical JSONL.

Settings come from the training config (data, custom.mode_seed, training.epochs, template.max_pixels).

Example:
    python scripts/sft_dataset.py --train results/data/demo/train.jsonl --val results/data/demo/val.jsonl \
        --config config/train/demo.yaml --missions config/missions.yaml --out results/train/sft/demo/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.errors import VlqcError
from vlqc.jsonl import read_json
from vlqc.missions import load_missions
from vlqc.train.config import load_train_config
from vlqc.train.sft_data import data_config, write_dataset


def _guidance(path: Path) -> dict[str, dict[str, str]]:
    """Mission → experiences from a guidance file (docs/guidance.md#the-guidance-file: mission → {experiences, …})."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not all(
        isinstance(s, dict) and isinstance(s.get("experiences"), dict) for s in doc.values()
    ):
        raise VlqcError(f"{path}: expected a mapping of mission to a section with an `experiences` mapping")
    return {mission: section["experiences"] for mission, section in doc.items()}


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__)
    parser.add_argument("--train", type=Path, nargs="+", required=True, help="canonical train JSONL file(s)")
    parser.add_argument("--val", type=Path, nargs="*", required=True, help="canonical val JSONL file(s); none: no val")
    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        help="training config: a config/train YAML (merged and validated here) or a resolved .json",
    )
    parser.add_argument("--missions", type=Path, required=True, help="missions file")
    parser.add_argument("--guidance", type=Path, help="Stage-B guidance JSON whose rules go into verdict prompts")
    parser.add_argument("--out", type=Path, required=True, help="data folder: train.jsonl, val.jsonl, images/")
    return parser


def run(args: argparse.Namespace) -> dict:
    return write_dataset(
        args.train,
        args.val,
        data_config(load_train_config(args.config)),
        args.out,
        load_missions(args.missions),
        guidance=_guidance(args.guidance) if args.guidance else None,
    )


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
