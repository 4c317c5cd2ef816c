"""Check every selected Stage-A photo before inference (rule stage_a_verify).

Writes one row per image (size, sha256, vision grid, expected vs actual image tokens); a photo
that does not open or whose token count disagrees is reported, and the step still succeeds.
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from vlqc.errors import VlqcError
from vlqc.inference.generation import load_processor
from vlqc.jsonl import write_jsonl
from vlqc.stage_a.jobs import read_selection
from vlqc.stage_a.verify import verify


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--selection", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True, help="model folder (its processor is used)")
    parser.add_argument("--max-pixels", type=int, default=None, help="pixel budget (default: the checkpoint's)")
    parser.add_argument("--out", type=Path, required=True, help="verify.jsonl")
    args = parser.parse_args()
    try:
        groups = read_selection(args.selection)
        rows = list(verify(groups, load_processor(args.checkpoint, args.max_pixels)))
        write_jsonl(args.out, rows, schema="stage_a_verify")
    except VlqcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    failed = Counter(r["error"]["code"] for r in rows if not r["ok"])
    mismatched = [f"{r['group_id']}/{r['image_name']}" for r in rows if r["ok"] and not r["match"]]
    for name in mismatched:
        print(f"warning: image-token count differs from the vision grid: {name}", file=sys.stderr)
    print(
        json.dumps(
            {"images": len(rows), "failed": dict(failed), "token_mismatches": len(mismatched)}, ensure_ascii=False
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
