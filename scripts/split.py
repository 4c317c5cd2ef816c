"""Seeded ticket-level train/val split and tiny subsets (rule split_dataset)."""

import argparse
import json
from pathlib import Path

from vlqc.data.dataset import write_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=Path, required=True, help="all_samples.jsonl")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--tiny-train", type=int, default=32)
    parser.add_argument("--tiny-val", type=int, default=8)
    args = parser.parse_args()
    counts = write_splits(args.samples, args.out, args.val_fraction, args.seed, args.tiny_train, args.tiny_val)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
