"""Convert a folder of annotation exports into results/data/<dataset>/ (rule convert_annotations).

Settings: the `convert` config section (max_pixels, factor, mode, summary_format, jpeg_quality).
"""

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.data.convert import ConvertSettings
from vlqc.data.dataset import convert_dataset


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="convert")
    parser.add_argument("--root", type=Path, required=True, help="folder searched recursively for *.json exports")
    parser.add_argument("--out", type=Path, required=True, help="output folder results/data/<dataset>")
    parser.add_argument("--workers", type=int, required=True, help="worker processes (the job's threads)")
    parser.add_argument(
        "--mission-domains", type=cli.json_object, required=True, help="JSON object mission → bbu|rru (missions file)"
    )
    return parser


def run(args: argparse.Namespace) -> dict:
    settings = ConvertSettings.from_config(args.settings, args.root, args.out, args.mission_domains)
    summary = convert_dataset(settings, mode=args.settings["mode"], workers=args.workers)
    return {k: summary[k] for k in ("exports", "samples", "invalid_samples", "invalid_objects")}


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
