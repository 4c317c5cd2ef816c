"""Check every selected Stage-A photo before inference (rule stage_a_verify).

Writes one row per image (size, sha256, vision grid, expected vs actual image tokens); a photo
that does not open or whose token count disagrees is reported, and the step still succeeds.
Settings: the `stage_a` config section (max_pixels; null: the checkpoint's processor budget).
"""

import argparse
import sys
from collections import Counter
from pathlib import Path

from vlqc import cli
from vlqc.inference.generation import load_processor
from vlqc.jsonl import write_jsonl
from vlqc.stage_a.jobs import read_selection
from vlqc.stage_a.verify import verify


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="stage_a")
    parser.add_argument("--selection", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True, help="model folder (its processor is used)")
    parser.add_argument("--base", type=Path, help="base model folder of a LoRA adapter checkpoint (its processor)")
    parser.add_argument("--out", type=Path, required=True, help="verify.jsonl")
    return parser


def run(args: argparse.Namespace) -> dict:
    groups = read_selection(args.selection)
    rows = list(verify(groups, load_processor(args.checkpoint, args.settings["max_pixels"], args.base)))
    write_jsonl(args.out, rows, schema="stage_a_verify")
    failed = Counter(r["error"]["code"] for r in rows if not r["ok"])
    mismatched = [f"{r['group_id']}/{r['image_name']}" for r in rows if r["ok"] and not r["match"]]
    for name in mismatched:
        print(f"warning: image-token count differs from the vision grid: {name}", file=sys.stderr)
    return {"images": len(rows), "failed": dict(failed), "token_mismatches": len(mismatched)}


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
