"""The mission table (config/missions.yaml): read once, checked against its schema."""

from __future__ import annotations

from pathlib import Path

import yaml

from vlqc.errors import SchemaError
from vlqc.schemas import check


def load_missions(path: str | Path) -> dict[str, dict]:
    """Mission name → {domain, focus, fail_conditions}; errors name the file."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SchemaError(f"cannot read missions file {path}: {exc}") from exc
    check(doc, "missions", str(path))
    return doc
