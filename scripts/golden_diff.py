"""Which golden answers changed between two golden dumps (by pred_sha256), e.g. two steps of a run.

Prints a table (id, bucket, before, after; long answers cut, line breaks shown as ⏎), or with --json
one JSON object: the two files, the row count, and the changed rows with their full texts and hashes.
Two dumps of different golden sets, or a malformed dump, are an error naming the file.

Example:
    python scripts/golden_diff.py results/train/sft/demo/qual/step_128_golden64.jsonl \
        results/train/sft/demo/qual/step_253_golden64.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from pathlib import Path

from vlqc import cli
from vlqc.evaluation.golden import changed_answers, check_hashes
from vlqc.jsonl import read_jsonl

CELL = 60  # characters of an answer shown in the table


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__)
    parser.add_argument("before", type=Path, help="golden dump JSONL (scripts/golden_dump.py)")
    parser.add_argument("after", type=Path, help="golden dump JSONL of the same golden set")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def load_dump(path: Path) -> list[dict]:
    rows = list(read_jsonl(path, "golden_dump_row"))
    check_hashes(rows, str(path))
    return rows


def width(text: str) -> int:
    """Terminal columns of `text`: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def cell(text: str, columns: int = CELL) -> str:
    """`text` on one line, cut to at most `columns` columns."""
    flat = text.replace("\n", "⏎")
    if width(flat) <= columns:
        return flat
    out = ""
    for char in flat:
        if width(out) + width(char) > columns - 1:
            break
        out += char
    return out + "…"


def table(changed: list[dict]) -> str:
    header = ("id", "bucket", "before", "after")
    lines = [header, *((row["id"], row["bucket"], cell(row["before"]), cell(row["after"])) for row in changed)]
    widths = [max(width(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(value + " " * (w - width(value)) for value, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def run(args: argparse.Namespace) -> None:
    before, after = load_dump(args.before), load_dump(args.after)
    changed = changed_answers(before, after, (str(args.before), str(args.after)))
    if args.json:
        doc = {"before": str(args.before), "after": str(args.after), "rows": len(before), "changed": changed}
        print(json.dumps(doc, ensure_ascii=False, indent=2))
        return
    print(f"{len(changed)} of {len(before)} golden answers changed from {args.before} to {args.after}")
    if changed:
        print(table(changed))


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
