"""Build the tiny Qwen3-VL base model, or check and link a real local checkpoint (rule base_model)."""

import argparse
import json
import sys
from pathlib import Path

from vlqc.errors import VlqcError
from vlqc.train.base_model import build_tiny_base, link_real_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output folder results/train/base/<name>")
    parser.add_argument("--sizes", type=json.loads, default=None, help="JSON object of tiny-model sizes")
    parser.add_argument("--seed", type=int, default=None, help="seed of the tiny model's initialisation (default 0)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a real local Qwen3-VL folder to link instead")
    args = parser.parse_args(argv)
    if args.checkpoint is not None and (args.sizes is not None or args.seed is not None):
        parser.error("--sizes and --seed describe the tiny model; they cannot go with --checkpoint")
    try:
        if args.checkpoint is not None:
            manifest = link_real_checkpoint(args.checkpoint, args.out)
        else:
            manifest = build_tiny_base(args.out, args.sizes, 0 if args.seed is None else args.seed)
    except VlqcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"out": str(args.out), "kind": manifest["kind"], "parameters": manifest["parameters"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
