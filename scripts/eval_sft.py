"""Measure the demo quality bar of a merged checkpoint on the val split (rule eval_sft)."""

import argparse
import json
import sys
from pathlib import Path

from vlqc.errors import VlqcError
from vlqc.jsonl import read_jsonl, write_json
from vlqc.missions import load_missions
from vlqc.train.config import load_train_config
from vlqc.train.evaluate import evaluate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="merged checkpoint folder")
    parser.add_argument("--config", type=Path, required=True, help="the run's training config (pixel cap)")
    parser.add_argument("--train", type=Path, required=True, help="canonical train JSONL (baseline)")
    parser.add_argument("--val", type=Path, required=True, help="canonical val JSONL")
    parser.add_argument("--missions", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        cfg = load_train_config(args.config)
        val = list(read_jsonl(args.val, schema="sample"))
        if not val:
            # A split with a single ticket per (mission, label) keeps every ticket in train.
            raise VlqcError(f"{args.val}: no photos to evaluate on; raise convert.val_fraction or add tickets")
        report = evaluate(
            args.model,
            list(read_jsonl(args.train, schema="sample")),
            val,
            args.val.parent,
            load_missions(args.missions),
            max_pixels=cfg["template"]["max_pixels"],
            batch_size=args.batch_size,
        )
    except VlqcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_json(args.out, report, schema="sft_eval")
    print(json.dumps({k: v for k, v in report.items() if k != "examples"}, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
