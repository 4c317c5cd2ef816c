"""Convert a folder of annotation exports into results/data/<dataset>/ (rule convert_annotations)."""

import argparse
import json
import sys
from pathlib import Path

from vlqc.data.convert import ConvertSettings
from vlqc.data.dataset import convert_dataset
from vlqc.errors import VlqcError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="folder searched recursively for *.json exports")
    parser.add_argument("--out", type=Path, required=True, help="output folder results/data/<dataset>")
    parser.add_argument("--mode", choices=["fail_fast", "lenient"], default="fail_fast")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-pixels", type=int, default=786432)
    parser.add_argument("--factor", type=int, default=32)
    parser.add_argument("--summary-format", choices=["json", "legacy"], default="json")
    parser.add_argument("--jpeg-quality", type=int, default=92)
    parser.add_argument("--mission-domains", type=json.loads, default={}, help="JSON object mission → bbu|rru")
    args = parser.parse_args()
    settings = ConvertSettings(
        root=args.root,
        out_dir=args.out,
        max_pixels=args.max_pixels,
        factor=args.factor,
        summary_format=args.summary_format,
        jpeg_quality=args.jpeg_quality,
        mission_domains=args.mission_domains,
    )
    try:
        summary = convert_dataset(settings, mode=args.mode, workers=args.workers)
    except VlqcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {k: summary[k] for k in ("exports", "samples", "invalid_samples", "invalid_objects")}, ensure_ascii=False
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
