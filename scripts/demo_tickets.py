"""Render the synthetic demo tickets (offline default data) into a ticket folder tree.

Example:
    python scripts/demo_tickets.py --out resources/demo/tickets --missions-file config/missions.yaml \
        --missions 挡风板安装检查 BBU接地线检查 --tickets-per-mission 24 --seed 20241111
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from vlqc.demo import generate
from vlqc.errors import SchemaError
from vlqc.missions import load_missions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="ticket root, replaced as a whole")
    parser.add_argument(
        "--missions-file", type=Path, default=Path("config/missions.yaml"), help="missions.yaml; default: %(default)s"
    )
    parser.add_argument(
        "--missions",
        nargs="+",
        metavar="MISSION",
        help="missions to render (default: every mission in the file; RRU ones are skipped)",
    )
    parser.add_argument("--tickets-per-mission", type=int, default=24)
    parser.add_argument("--seed", type=int, default=20241111)
    parser.add_argument(
        "--datalist-fraction", type=float, default=0.1, help="share of exports in the legacy dataList variant"
    )
    parser.add_argument(
        "--exif-fraction", type=float, default=0.15, help="share of JPEGs stored with an EXIF orientation tag"
    )
    parser.add_argument(
        "--fail-fraction", type=float, default=0.5, help="planned share of 审核不通过 tickets per mission"
    )
    parser.add_argument(
        "--irrelevant-fraction", type=float, default=0.05, help="share of tickets with one irrelevant photo"
    )
    parser.add_argument(
        "--manifest", type=Path, help="where to write the ticket list (default: <out>.json beside the tree)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    try:
        defined = load_missions(args.missions_file)
    except SchemaError as exc:
        parser.error(str(exc))
    missions = args.missions or list(defined)
    undefined = [m for m in missions if m not in defined]
    if undefined:
        parser.error(f"mission(s) {undefined} are not defined in {args.missions_file}")

    try:
        summary = generate(
            args.out,
            {m: defined[m] for m in missions},  # labels come from these missions' rules
            args.tickets_per_mission,
            args.seed,
            datalist_fraction=args.datalist_fraction,
            exif_fraction=args.exif_fraction,
            fail_fraction=args.fail_fraction,
            irrelevant_fraction=args.irrelevant_fraction,
            manifest=args.manifest,
            progress=True,  # the bar goes to the job log
        )
    except ValueError as exc:  # bad mission list or option values
        parser.error(str(exc))
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
