"""Stage-B plots of a run folder, and the false-pass rate of every mission against the target
(rules plot_stage_b_confusion, plot_stage_b_metrics, plot_stage_b_outcomes, plot_stage_b_false_pass).

Examples:
    python scripts/plot_stage_b.py confusion --title "挡风板安装检查 eval/demo" \
        --group-report results/stage_b/挡风板安装检查/eval/demo/group_report.jsonl --out confusion.png
    python scripts/plot_stage_b.py false_pass --title "eval/demo" --out false_pass.png \
        --run 挡风板安装检查 results/stage_b/挡风板安装检查/eval/demo/metrics.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.report import stage_b


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__)
    plots = parser.add_subparsers(dest="plot", required=True, parser_class=argparse.ArgumentParser)
    confusion = plots.add_parser("confusion", help="human label × final verdict")
    metrics = plots.add_parser("metrics", help="false-pass rate and accuracy over steps, with the target")
    outcomes = plots.add_parser("outcomes", help="verdict sources, guardrail overrides, review queue, hard failures")
    false_pass = plots.add_parser("false_pass", help="final false-pass rate per mission against the target")
    for sub in (confusion, outcomes):
        sub.add_argument("--group-report", type=Path, required=True, help="the run's group_report.jsonl")
    metrics.add_argument("--metrics", type=Path, required=True, help="the run's metrics.jsonl")
    outcomes.add_argument("--need-review", type=Path, required=True, help="the run's need_review.json")
    false_pass.add_argument(
        "--run", nargs=2, action="append", metavar=("MISSION", "METRICS"), help="a mission's metrics.jsonl"
    )
    for sub in (confusion, metrics, outcomes, false_pass):
        sub.add_argument("--title", required=True)
        sub.add_argument("--out", type=Path, required=True, help="PNG to write")
    return parser


def run(args: argparse.Namespace) -> dict:
    if args.plot == "confusion":
        return stage_b.plot_confusion(args.group_report, args.out, args.title)
    if args.plot == "metrics":
        return stage_b.plot_metrics(args.metrics, args.out, args.title)
    if args.plot == "outcomes":
        return stage_b.plot_outcomes(args.group_report, args.need_review, args.out, args.title)
    return stage_b.plot_false_pass(args.run or [], args.out, args.title)


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
