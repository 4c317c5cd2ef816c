"""Measure the demo quality bar of a merged checkpoint on the val split (rule eval_sft).

Settings: the `train` config section (eval_batch_size, eval_max_new_tokens); the pixel cap is
the run's training config's.
"""

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.errors import VlqcError
from vlqc.jsonl import read_jsonl, write_json
from vlqc.missions import load_missions
from vlqc.train.config import load_train_config, prompt_config
from vlqc.train.evaluate import evaluate


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="train")
    parser.add_argument("--model", type=Path, required=True, help="merged checkpoint folder")
    parser.add_argument("--config", type=Path, required=True, help="the run's training config (pixel cap, prompts)")
    parser.add_argument("--train", type=Path, required=True, help="canonical train JSONL (baseline)")
    parser.add_argument("--val", type=Path, required=True, help="canonical val JSONL")
    parser.add_argument("--missions", type=Path, required=True, help="missions file")
    parser.add_argument("--out", type=Path, required=True, help="eval.json")
    return parser


def run(args: argparse.Namespace) -> dict:
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
        batch_size=args.settings["eval_batch_size"],
        max_new_tokens=args.settings["eval_max_new_tokens"],
        prompts=prompt_config(cfg),
    )
    write_json(args.out, report, schema="sft_eval")
    return {k: v for k, v in report.items() if k != "examples"}


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
