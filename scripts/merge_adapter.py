"""Merge a LoRA checkpoint into its base (or copy a full one) as a plain transformers folder (rule merge_adapter)."""

import argparse
from pathlib import Path

from vlqc.train.merge import merge_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(f"merged: {merge_checkpoint(args.checkpoint, args.base, args.out)}")


if __name__ == "__main__":
    main()
