"""Measure the demo quality bar of a merged checkpoint on the val split (rule eval_sft)."""

import argparse
import json
from pathlib import Path

from vlqc.jsonl import read_jsonl, write_json
from vlqc.missions import load_missions
from vlqc.train.config import load_train_config
from vlqc.train.evaluate import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="merged checkpoint folder")
    parser.add_argument("--config", type=Path, required=True, help="the run's training config (pixel cap)")
    parser.add_argument("--train", type=Path, required=True, help="canonical train JSONL (baseline)")
    parser.add_argument("--val", type=Path, required=True, help="canonical val JSONL")
    parser.add_argument("--missions", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cfg = load_train_config(args.config)
    report = evaluate(
        args.model,
        list(read_jsonl(args.train, schema="sample")),
        list(read_jsonl(args.val, schema="sample")),
        args.val.parent,
        load_missions(args.missions),
        max_pixels=cfg["template"]["max_pixels"],
        batch_size=args.batch_size,
    )
    write_json(args.out, report, schema="sft_eval")
    print(json.dumps({k: v for k, v in report.items() if k != "examples"}, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
