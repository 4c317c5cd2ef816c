"""Load the JSON Schemas in `schemas/` and validate documents against them.

A contract lives once, in `schemas/<name>.schema.json`; Snakemake validates the
config against the same files. Errors name the file, the line (for JSONL) and the
dotted path (`objects[2].desc`) of the violation.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from vlqc.errors import SchemaError

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def schema_path(name: str) -> Path:
    return SCHEMA_DIR / f"{name}.schema.json"


def available() -> list[str]:
    return sorted(p.name.removesuffix(".schema.json") for p in SCHEMA_DIR.glob("*.schema.json"))


@lru_cache(maxsize=None)
def registry() -> Registry:
    """Every schema by its `$id`, so one schema can `$ref` another by file name."""
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        resources.append((schema.get("$id", path.name), DRAFT202012.create_resource(schema)))
    return Registry().with_resources(resources)


@lru_cache(maxsize=None)
def validator(name: str) -> Draft202012Validator:
    path = schema_path(name)
    if not path.is_file():
        raise SchemaError(f"unknown schema {name!r}; known: {', '.join(available())}")
    schema = json.loads(path.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=registry(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def validate(doc: Any, name: str, where: str = "<document>") -> None:
    """Raise SchemaError naming `where` and the JSON path if `doc` violates schema `name`."""
    error = next(iter(sorted(validator(name).iter_errors(doc), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        raise SchemaError(f"{where}: {dotted(error.absolute_path)}: {error.message} (schema {name})")


def dotted(path) -> str:
    """`a.b[2].c` form of a JSON path given as a sequence of keys and indices."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def problems(doc: Any, name: str) -> list[str]:
    """Every violation of schema `name`, each naming its dotted path; unknown keys one by one."""
    found = []
    for error in validator(name).iter_errors(doc):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = set(error.schema.get("properties", {}))
            pattern_props = error.schema.get("patternProperties", {})
            for key in error.instance:
                if key not in known and not pattern_props:
                    found.append(f"{dotted([*path, key])}: unknown key")
            continue
        found.append(f"{dotted(path)}: {error.message}")
    return sorted(found)


def check(doc: Any, name: str, where: str) -> None:
    """Raise one SchemaError listing every problem of `doc` (from file `where`)."""
    found = problems(doc, name)
    if found:
        raise SchemaError(f"{where} does not match schema {name}:\n  " + "\n  ".join(found))


def with_defaults(schema: dict, doc: dict) -> dict:
    """A copy of `doc` with every missing key that the schema gives a default filled in, nested too."""
    out = copy.deepcopy(doc)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if "properties" in sub and key in out:
            out[key] = with_defaults(sub, out[key])
    return out
