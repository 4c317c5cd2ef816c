"""Discover a mission's ticket groups and sample them (rule stage_a_select).

Writes the selection every Stage-A rank and the merge read, so all of them agree on it.
Settings: the `stage_a` config section (pass_group_number, fail_group_number, sample_seed).
"""

import argparse
import sys
from collections import Counter
from pathlib import Path

from vlqc import cli
from vlqc.stage_a.discover import discover, sample_groups
from vlqc.stage_a.jobs import write_selection


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="stage_a")
    parser.add_argument("--root", type=Path, required=True, help="<root>/<mission>/{审核通过|审核不通过}/<group>/")
    parser.add_argument("--mission", required=True)
    parser.add_argument("--out", type=Path, required=True, help="selection.jsonl")
    return parser


def run(args: argparse.Namespace) -> dict:
    s = args.settings
    groups = discover(args.root, args.mission)
    selected = sample_groups(groups, s["pass_group_number"], s["fail_group_number"], s["sample_seed"])
    write_selection(args.out, selected)
    labels = Counter(g.label for g in selected)
    return {
        "discovered": len(groups),
        "selected": len(selected),
        "pass": labels["pass"],
        "fail": labels["fail"],
        "images": sum(len(g.images) for g in selected),
    }


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
