"""Render the synthetic demo tickets (offline default data) into a ticket folder tree (rule demo_tickets).

Settings: the `demo` config section (missions, tickets_per_mission, seed and the shares of
legacy exports, EXIF-rotated, failing and irrelevant photos); RRU missions are skipped.

Example:
    python scripts/demo_tickets.py --out resources/demo/tickets --manifest resources/demo/tickets.json \
        --missions-file config/missions.yaml --settings '{"missions": ["挡风板安装检查"], "tickets_per_mission": 4}'
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.demo import generate
from vlqc.errors import VlqcError
from vlqc.missions import load_missions


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="demo")
    parser.add_argument("--out", type=Path, required=True, help="ticket root, replaced as a whole")
    parser.add_argument("--manifest", type=Path, required=True, help="the ticket list, outside the ticket root")
    parser.add_argument("--missions-file", type=Path, required=True, help="missions file")
    return parser


def run(args: argparse.Namespace) -> dict:
    settings = args.settings
    defined = load_missions(args.missions_file)
    undefined = [m for m in settings["missions"] if m not in defined]
    if undefined:
        raise VlqcError(f"mission(s) {undefined} are not defined in {args.missions_file}")
    try:
        return generate(
            args.out,
            {m: defined[m] for m in settings["missions"]},  # labels come from these missions' rules
            settings["tickets_per_mission"],
            settings["seed"],
            datalist_fraction=settings["datalist_fraction"],
            exif_fraction=settings["exif_fraction"],
            fail_fraction=settings["fail_fraction"],
            irrelevant_fraction=settings["irrelevant_fraction"],
            manifest=args.manifest,
            progress=True,  # the bar goes to the job log
        )
    except ValueError as exc:  # a mission the generator cannot draw
        raise VlqcError(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
