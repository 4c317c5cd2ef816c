"""`python -m vlqc validate FILE --schema NAME`: check a JSON, JSONL or YAML file against a schema."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from vlqc.errors import SchemaError
from vlqc.jsonl import read_json, read_jsonl
from vlqc.schemas import available, check


def validate_file(path: Path, schema: str) -> int:
    """Validate every record (JSONL) or the document (JSON/YAML); returns the record count."""
    if path.suffix == ".jsonl":
        return sum(1 for _ in read_jsonl(path, schema=schema))
    if path.suffix in (".yaml", ".yml"):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    else:
        doc = read_json(path)
    check(doc, schema, str(path))
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlqc")
    sub = parser.add_subparsers(dest="command", required=True)
    val = sub.add_parser("validate", help="validate a file against one of the schemas in schemas/")
    val.add_argument("file", type=Path)
    val.add_argument("--schema", required=True, choices=available())
    args = parser.parse_args(argv)
    try:
        n = validate_file(args.file, args.schema)
    except (SchemaError, OSError) as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    print(f"ok: {args.file} ({n} record{'s' if n != 1 else ''}) matches {args.schema}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
