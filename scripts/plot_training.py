"""Training plots of one run (rules plot_loss, plot_eval_buckets, plot_ablation; docs/evaluation.md#the-report).

Examples:
    python scripts/plot_training.py loss --run demo --logging results/train/sft/demo/logging.jsonl \
        --out results/plots/train/demo/loss.png
    python scripts/plot_training.py buckets --run demo --out results/plots/train/demo/eval_loss_buckets.png \
        results/train/sft/demo/eval_loss/step_100.json results/train/sft/demo/eval_loss/step_200.json
    python scripts/plot_training.py ablation --run demo --ablation results/train/sft/demo/ablation.json \
        --out results/plots/train/demo/ablation.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.report import training


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__)
    plots = parser.add_subparsers(dest="plot", required=True, parser_class=argparse.ArgumentParser)
    loss = plots.add_parser("loss", help="training and ms-swift eval loss over steps")
    loss.add_argument("--logging", type=Path, required=True, help="the run's logging.jsonl")
    buckets = plots.add_parser("buckets", help="eval loss per length bucket across checkpoints")
    buckets.add_argument("step_files", type=Path, nargs="*", help="eval_loss/step_<S>.json of each checkpoint")
    ablation = plots.add_parser("ablation", help="image-ablation bars with the ordering line")
    ablation.add_argument("--ablation", type=Path, required=True, help="the run's ablation.json")
    for sub in (loss, buckets, ablation):
        sub.add_argument("--run", required=True)
        sub.add_argument("--out", type=Path, required=True, help="PNG to write")
    return parser


def run(args: argparse.Namespace) -> dict:
    if args.plot == "loss":
        return training.plot_loss(args.logging, args.out, args.run)
    if args.plot == "buckets":
        return training.plot_eval_buckets(args.step_files, args.out, args.run)
    return training.plot_ablation(args.ablation, args.out, args.run)


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
