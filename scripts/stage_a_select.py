"""Discover a mission's ticket groups and sample them (rule stage_a_select).

Writes the selection every Stage-A rank and the merge read, so all of them agree on it.
"""

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

from vlqc.errors import VlqcError
from vlqc.stage_a.discover import discover, sample_groups
from vlqc.stage_a.jobs import write_selection


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="<root>/<mission>/{审核通过|审核不通过}/<group>/")
    parser.add_argument("--mission", required=True)
    parser.add_argument("--pass-n", type=int, default=None, help="pass groups to draw (default: all)")
    parser.add_argument("--fail-n", type=int, default=None, help="fail groups to draw (default: all)")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--out", type=Path, required=True, help="selection.jsonl")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        groups = discover(args.root, args.mission)
        selected = sample_groups(groups, args.pass_n, args.fail_n, args.seed)
        write_selection(args.out, selected)
    except VlqcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    labels = Counter(g.label for g in selected)
    print(
        json.dumps(
            {
                "discovered": len(groups),
                "selected": len(selected),
                "pass": labels["pass"],
                "fail": labels["fail"],
                "images": sum(len(g.images) for g in selected),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
