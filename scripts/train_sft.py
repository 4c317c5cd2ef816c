"""Supervised fine-tuning through ms-swift under torchrun (rule train_sft)."""

import argparse
import sys
from pathlib import Path

from vlqc.errors import VlqcError
from vlqc.train.run import train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="training config YAML (extends allowed)")
    parser.add_argument("--base", type=Path, required=True, help="base model folder")
    parser.add_argument("--data", type=Path, required=True, help="folder with the ms-swift train.jsonl / val.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="run folder results/train/sft/<run>")
    parser.add_argument("--nproc", type=int, default=1, help="torchrun processes on CPU (gloo)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs; one process each, overrides --nproc")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads shared by the processes")
    args = parser.parse_args()
    try:
        checkpoint = train(args.config, args.base, args.data, args.out, args.nproc, args.gpus, args.threads)
    except VlqcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"checkpoint: {checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
