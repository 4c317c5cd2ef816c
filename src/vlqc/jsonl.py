"""JSON / JSONL I/O with schema validation and atomic writes.

Writers validate every record before anything reaches disk and write to a
temp file in the target folder that is renamed on success, so a crash never
leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from vlqc.errors import SchemaError
from vlqc.schemas import validate


def dumps(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temp file beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, records: Iterable[Any], schema: str | None = None) -> int:
    """Validate and write records atomically; returns the number written."""
    n = 0
    with atomic_open(path) as fh:
        for n, record in enumerate(records, start=1):
            if schema:
                validate(record, schema, f"{path}: record {n}")
            fh.write(dumps(record) + "\n")
    return n


def read_jsonl(path: str | os.PathLike, schema: str | None = None) -> Iterator[Any]:
    """Yield records, validating each; errors name the file and line."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SchemaError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from exc
            if schema:
                validate(record, schema, f"{path}:{lineno}")
            yield record


def write_json(path: str | os.PathLike, doc: Any, schema: str | None = None) -> None:
    if schema:
        validate(doc, schema, str(path))
    with atomic_open(path) as fh:
        json.dump(doc, fh, ensure_ascii=False, indent=2)
        fh.write("\n")


def read_json(path: str | os.PathLike, schema: str | None = None) -> Any:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    if schema:
        validate(doc, schema, str(path))
    return doc
