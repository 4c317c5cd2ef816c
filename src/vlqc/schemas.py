"""Load the JSON Schemas in `schemas/` and validate documents against them.

A contract lives once, in `schemas/<name>.schema.json`; Snakemake validates the
config against the same files. Errors name the file, the line (for JSONL) and the
dotted path (`objects[2].desc`) of the violation.

The schemas are also the one home of every default: `section` validates a config section
and fills its defaults, `defaults` gives them for library code that needs a value without
a config at hand.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from vlqc.errors import SchemaError

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def schema_path(name: str) -> Path:
    return SCHEMA_DIR / f"{name}.schema.json"


def available() -> list[str]:
    return sorted(p.name.removesuffix(".schema.json") for p in SCHEMA_DIR.glob("*.schema.json"))


@cache
def load(name: str) -> dict:
    """Schema `name` as parsed JSON; callers must not change it."""
    path = schema_path(name)
    if not path.is_file():
        raise SchemaError(f"unknown schema {name!r}; known: {', '.join(available())}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc


@cache
def registry() -> Registry:
    """Every schema by its `$id`, so one schema can `$ref` another by file name."""
    resources = []
    for name in available():
        schema = load(name)
        resources.append((schema.get("$id", schema_path(name).name), DRAFT202012.create_resource(schema)))
    return Registry().with_resources(resources)


@cache
def validator(name: str) -> Draft202012Validator:
    schema = load(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=registry(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def validate(doc: Any, name: str, where: str = "<document>") -> None:
    """Raise SchemaError naming `where` and the JSON path if `doc` violates schema `name`."""
    fast = fast_check(name)
    if fast is not None and fast(doc):
        return
    error = next(iter(sorted(validator(name).iter_errors(doc), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        raise SchemaError(f"{where}: {dotted(error.absolute_path)}: {error.message} (schema {name})")


# Fast path. jsonschema costs ~50 µs per small record, too slow for 100k-row JSONL files, so a
# schema is also compiled by fastjsonschema (~3 µs) where it can be. fastjsonschema implements
# draft 7, so each schema is first rewritten into the draft-7 spelling of the same rules; a schema
# with a keyword whose meaning differs between the drafts (unevaluatedProperties, $id below the
# root, ...) is left to jsonschema alone. The compiled check only ever accepts: a document it
# rejects goes through jsonschema, which decides and words the error, so results and messages
# stay jsonschema's (tests/test_schemas.py checks that the two agree on every compiled schema).
Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "$comment", "title", "description", "default", "examples"})
# Keywords that mean the same in draft 7 and 2020-12.
_SAME = frozenset(
    {
        "type", "enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
        "minLength", "maxLength", "pattern", "required", "properties", "patternProperties", "additionalProperties",
        "propertyNames", "minProperties", "maxProperties", "items", "minItems", "maxItems", "uniqueItems",
        "if", "then", "else", "not", "allOf", "anyOf", "oneOf", "$ref",
    }
)  # fmt: skip
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs"})  # name → subschema
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_DRAFT7 = "http://json-schema.org/draft-07/schema#"
# fastjsonschema mis-joins relative `$id`s (ours are `vlqc/<file>`); under this absolute base they
# join as they should, and its loader for the `file` scheme (`_by_id`) serves our files, never the disk.
_BASE = "file:///vlqc-schemas/"


class _Unsupported(Exception):
    """The schema needs a keyword whose draft-7 meaning differs; jsonschema alone validates it."""


def _draft7(node: Any, root: bool = False) -> Any:
    """A copy of a 2020-12 (sub)schema that means the same under draft 7."""
    if isinstance(node, bool):
        return node
    if "$id" in node and not root:
        raise _Unsupported("$id below the root changes what $ref points to")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _SCHEMA_MAPS:
            out[key] = {name: _draft7(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS:
            out[key] = [_draft7(sub) for sub in value]
        elif key in ("items", "additionalProperties", "propertyNames", "if", "then", "else", "not"):
            out[key] = _draft7(value)
        elif key in _SAME or key in _ANNOTATIONS:
            out[key] = value
        else:
            raise _Unsupported(key)
    if "prefixItems" in out:
        # 2020-12 prefixItems + items are draft 7's items (a list) + additionalItems.
        prefix = out.pop("prefixItems")
        if "items" in out:
            out["additionalItems"] = out.pop("items")
        out["items"] = prefix
    if "$ref" in out and len(set(out) - _ANNOTATIONS) > 1:
        # Draft 7 ignores the siblings of $ref; 2020-12 applies them as well.
        out["allOf"] = [{"$ref": out.pop("$ref")}, *out.get("allOf", [])]
    if root:
        out["$schema"] = _DRAFT7
        out["$id"] = _BASE + out.get("$id", "")
    return out


def _by_id(uri: str) -> dict:
    """fastjsonschema's loader of a `$ref` to another schema file (its `$id`, relative to the referrer's)."""
    for name in available():
        schema = load(name)
        if _BASE + schema.get("$id", "") == uri:
            return _draft7(schema, root=True)
    raise _Unsupported(f"$ref to {uri}, which no schema in {SCHEMA_DIR} has as its $id")


@cache
def fast_check(name: str) -> Check | None:
    """A compiled acceptance check for schema `name`, or None where only jsonschema can judge it."""
    try:
        compiled = fastjsonschema.compile(_draft7(load(name), root=True), handlers={"file": _by_id}, use_default=False)
    except _Unsupported:
        return None

    def accepts(doc: Any) -> bool:
        try:
            compiled(doc)
        except fastjsonschema.JsonSchemaValueException:
            return False
        return True

    return accepts


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
            patterns = [re.compile(p) for p in error.schema.get("patternProperties", {})]
            for key in error.instance:
                if key not in known and not any(p.search(key) for p in patterns):
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
        if key in out and ("properties" in sub or isinstance(sub.get("additionalProperties"), dict)):
            out[key] = with_defaults(sub, out[key])
    # A mapping of named entries (sweeps: name → sweep) fills each entry, as Snakemake's validate does.
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and "properties" in extra:
        for key in out.keys() - schema.get("properties", {}).keys():
            out[key] = with_defaults(extra, out[key])
    return out


def sub_schema(name: str, path: str) -> dict:
    """The subschema of schema `name` at the dotted property `path` (`stage_b.reflection`); "" is the root."""
    node = load(name)
    for key in filter(None, path.split(".")):
        properties = node.get("properties", {})
        if key not in properties:
            raise SchemaError(f"schema {name} has no section {path!r} (no property {key!r})")
        node = properties[key]
    return node


def defaults(name: str, path: str = "") -> dict:
    """Every default of the section at `path` of schema `name`, nested sections filled too: the
    values library code falls back on, written once, in the schema."""
    return with_defaults(sub_schema(name, path), {})


def section(name: str, path: str, doc: Mapping[str, Any], where: str) -> dict:
    """`doc` checked as the section at dotted `path` of schema `name` (every problem at once, each
    under its full dotted path, such as `convert.max_pixels`) and returned with its defaults filled.
    For scripts handed one section of the validated config, and for library settings built from one."""
    keys = [key for key in path.split(".") if key]
    sub_schema(name, path)  # an unknown section is a programming error, named as such
    wrapped: Any = doc
    for key in reversed(keys):
        wrapped = {key: wrapped}
    check(wrapped, name, where)
    filled = with_defaults(load(name), wrapped)
    for key in keys:
        filled = filled[key]
    return filled
