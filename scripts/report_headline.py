"""The report's headline page and its numbers (rule report_headline; docs/evaluation.md#the-report).

Example:
    python scripts/report_headline.py --serving-run demo --html results/plots/headline.html \
        --json results/plots/headline.json \
        --run demo results/train/sft/demo/eval_loss/step_253.json results/train/sft/demo/ablation.json \
        --stage-a results/stage_a/挡风板安装检查/stats.json --stage-b-run demo \
        --stage-b 挡风板安装检查 results/stage_b/挡风板安装检查/eval/demo/{metrics,group_report}.jsonl \
            results/stage_b/挡风板安装检查/eval/demo/need_review.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.report import headline


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__)
    parser.add_argument("--serving-run", required=True, help="the run that serves Stage-A and Stage-B")
    parser.add_argument(
        "--run",
        nargs=3,
        action="append",
        metavar=("RUN", "EVAL_LOSS", "ABLATION"),
        help="a training run: eval_loss/step_<S>.json of its last saved checkpoint and its ablation.json",
    )
    parser.add_argument("--stage-a", nargs="+", type=Path, help="results/stage_a/<mission>/stats.json")
    parser.add_argument("--stage-b-run", help="the Stage-B eval run shown")
    parser.add_argument(
        "--stage-b",
        nargs=4,
        action="append",
        metavar=("MISSION", "METRICS", "GROUP_REPORT", "NEED_REVIEW"),
        help="a mission's Stage-B run files",
    )
    parser.add_argument("--html", type=Path, required=True, help="page to write")
    parser.add_argument("--json", type=Path, required=True, help="numbers to write (schema report_headline)")
    return parser


def run(args: argparse.Namespace) -> dict:
    doc = headline.collect(
        [headline.RunFiles(*files) for files in args.run or []],
        args.serving_run,
        args.stage_a or [],
        [headline.StageBFiles(*files) for files in args.stage_b or []],
        args.stage_b_run,
    )
    headline.write(doc, args.html, args.json)
    return headline.labels(doc)


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
