"""The shell every script under scripts/ shares: arguments, settings, logging, errors, summary.

A script is `run(args) -> summary` plus its paths:

    def arguments() -> cli.Parser:
        parser = cli.Parser(__doc__, settings="convert")
        parser.add_argument("--out", type=Path, required=True)
        return parser

    def main(argv=None) -> int:
        return cli.main(run, arguments(), argv)

Arguments name files and wildcards (and the job's thread count) only, with no defaults. Every
setting comes as `--settings JSON`, one section of the workflow config (a rule passes the keys of
`config[<section>]` its job reads, so that Snakemake reruns it when one of them changes);
`cli.main` checks it against that section of `schemas/config.schema.json` and fills the schema's
defaults, so a default is written once, in the schema, for the pipeline and for a script run by
hand alike.

`cli.main` sets up logging (INFO, timestamped, to stderr), turns a `VlqcError` or `OSError` into one line
`error: …` on stderr and exit status 1, and prints the summary `run` returns as one JSON line
on stdout (exit status 0). A `prefix` (`rank 1: ` under torchrun, where ranks share one log)
starts each of these lines.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from vlqc.errors import VlqcError
from vlqc.schemas import section


def json_object(text: str) -> Any:
    """argparse type of a JSON argument."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc.msg} at character {exc.pos}") from exc


class Parser(argparse.ArgumentParser):
    """An argument parser described by the first paragraph of `doc` (the rest shows as the epilog).

    With `settings` (a dotted section of the config schema: `convert`, `stage_a`, …) it takes
    `--settings JSON`, which `main` hands to `run` checked and with its defaults filled."""

    def __init__(self, doc: str, settings: str | None = None):
        summary, _, rest = doc.strip().partition("\n\n")
        super().__init__(description=summary, epilog=rest or None, formatter_class=argparse.RawDescriptionHelpFormatter)
        self.section = settings
        if settings:
            self.add_argument(
                "--settings",
                type=json_object,
                required=True,
                metavar="JSON",
                help=f"the `{settings}` section of the workflow config as a JSON object; "
                "a missing key takes its default from schemas/config.schema.json",
            )


def main(
    run: Callable[[argparse.Namespace], Any],
    parser: Parser,
    argv: Sequence[str] | None = None,
    *,
    prefix: str = "",
) -> int:
    """Parse `argv`, call `run(args)` and report as the module docstring says."""
    args = parser.parse_args(argv)
    # Timestamps: a job log is read after the fact, and long jobs (training, Stage-B) need their pace.
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {prefix}%(levelname)s %(message)s")
    try:
        if parser.section:
            args.settings = section("config", parser.section, args.settings, "--settings")
        summary = run(args)
    except (VlqcError, OSError) as exc:
        print(f"{prefix}error: {exc}", file=sys.stderr)
        return 1
    if summary is not None:
        print(prefix + json.dumps(summary, ensure_ascii=False))
    return 0
