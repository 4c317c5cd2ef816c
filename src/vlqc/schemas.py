"""Load the JSON Schemas in `schemas/` and validate documents against them.

A contract lives once, in `schemas/<name>.schema.json`; Snakemake validates the
config against the same files. Errors name the file, the line (for JSONL) and the
dotted path (`objects[2].desc`) of the violation.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from functools import cache
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


@cache
def registry() -> Registry:
    """Every schema by its `$id`, so one schema can `$ref` another by file name."""
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        resources.append((schema.get("$id", path.name), DRAFT202012.create_resource(schema)))
    return Registry().with_resources(resources)


@cache
def validator(name: str) -> Draft202012Validator:
    path = schema_path(name)
    if not path.is_file():
        raise SchemaError(f"unknown schema {name!r}; known: {', '.join(available())}")
    schema = json.loads(path.read_text(encoding="utf-8"))
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


# Fast path. jsonschema costs ~50 µs per small record, too slow for 100k-row JSONL files; a
# schema that only uses the keywords in _KEYWORDS is compiled to plain Python checks (~5 µs).
# The compiled check only ever accepts: a document it rejects goes through jsonschema, which
# decides and words the error, so results and messages stay jsonschema's.
Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "$comment", "title", "description", "default", "examples"})
_TYPES: dict[str, Check] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
    "integer": lambda x: (isinstance(x, int) and not isinstance(x, bool)) or (isinstance(x, float) and x.is_integer()),
}


class _Unsupported(Exception):
    """The schema needs something the fast path does not implement; jsonschema alone validates it."""


class _Compiler:
    """Compiles one schema document; `$ref`s may point into its `$defs` only."""

    def __init__(self, root: dict):
        self.root = root
        self.open_refs: set[str] = set()  # refs being compiled: a cycle means a recursive schema

    def compile(self, node: Any) -> Check:
        if node is True:
            return lambda x: True
        if node is False:
            return lambda x: False
        if "$id" in node and node is not self.root:
            raise _Unsupported("$id below the root changes what $ref points to")
        checks = []
        for key, value in node.items():
            # then/else belong to `if`; patternProperties/additionalProperties are read together below.
            if key in _ANNOTATIONS or key in ("then", "else", "patternProperties", "additionalProperties"):
                continue
            if key not in _KEYWORDS:
                raise _Unsupported(key)
            checks.append(_KEYWORDS[key](self, value, node))
        if "patternProperties" in node or "additionalProperties" in node:
            checks.append(self.members(node))
        return _all_of(checks)

    def members(self, node: dict) -> Check:
        """patternProperties, then additionalProperties for keys that neither they nor `properties` name."""
        named = set(node.get("properties", {}))
        patterns = [(re.compile(p).search, self.compile(sub)) for p, sub in node.get("patternProperties", {}).items()]
        extra = self.compile(node.get("additionalProperties", True))

        def member_ok(key: str, value: Any) -> bool:
            matched = [check for search, check in patterns if search(key)]
            if not matched:
                return key in named or extra(value)
            return all(check(value) for check in matched)

        return lambda x: not isinstance(x, dict) or all(member_ok(k, v) for k, v in x.items())

    def ref(self, value: str) -> Check:
        name = value.removeprefix("#/$defs/")
        if name == value or "/" in name or name not in self.root.get("$defs", {}) or name in self.open_refs:
            raise _Unsupported(value)
        self.open_refs.add(name)
        check = self.compile(self.root["$defs"][name])
        self.open_refs.discard(name)
        return check


@cache
def fast_check(name: str) -> Check | None:
    """A compiled acceptance check for schema `name`, or None where only jsonschema can judge it."""
    root = validator(name).schema
    try:
        return _Compiler(root).compile(root)
    except _Unsupported:
        return None


def _same(a: Any, b: Any) -> bool:
    # JSON Schema equality: true is not 1, but 1 is 1.0.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _scalars(values: list) -> list:
    if any(isinstance(v, (dict, list)) for v in values):
        raise _Unsupported("enum/const of objects or arrays")
    return values


def _all_of(checks: list[Check]) -> Check:
    # Plain loops, not all(<generator>): this runs once per record and per nested object.
    if len(checks) == 1:
        return checks[0]

    def check(x: Any) -> bool:
        for each in checks:
            if not each(x):
                return False
        return True

    return check


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _type(compiler: _Compiler, value: str | list[str], node: dict) -> Check:
    if isinstance(value, str):
        return _TYPES[value]
    tests = [_TYPES[t] for t in value]
    return lambda x: any(test(x) for test in tests)


def _enum(compiler: _Compiler, value: list, node: dict) -> Check:
    options = _scalars(value)
    if all(isinstance(option, str) for option in options):
        return lambda x: isinstance(x, str) and x in options
    return lambda x: any(_same(x, option) for option in options)


def _const(compiler: _Compiler, value: Any, node: dict) -> Check:
    (const,) = _scalars([value])
    return lambda x: _same(x, const)


def _minimum(compiler: _Compiler, value: float, node: dict) -> Check:
    return lambda x: not _is_number(x) or x >= value


def _maximum(compiler: _Compiler, value: float, node: dict) -> Check:
    return lambda x: not _is_number(x) or x <= value


def _min_length(compiler: _Compiler, value: int, node: dict) -> Check:
    return lambda x: not isinstance(x, str) or len(x) >= value


def _pattern(compiler: _Compiler, value: str, node: dict) -> Check:
    search = re.compile(value).search
    return lambda x: not isinstance(x, str) or search(x) is not None


def _required(compiler: _Compiler, value: list[str], node: dict) -> Check:
    return lambda x: not isinstance(x, dict) or all(key in x for key in value)


def _properties(compiler: _Compiler, value: dict, node: dict) -> Check:
    compiled = [(key, compiler.compile(sub)) for key, sub in value.items()]

    def check(x: Any) -> bool:
        if isinstance(x, dict):
            for key, each in compiled:
                if key in x and not each(x[key]):
                    return False
        return True

    return check


def _min_properties(compiler: _Compiler, value: int, node: dict) -> Check:
    return lambda x: not isinstance(x, dict) or len(x) >= value


def _items(compiler: _Compiler, value: Any, node: dict) -> Check:
    check = compiler.compile(value)
    return lambda x: not isinstance(x, list) or all(check(item) for item in x)


def _min_items(compiler: _Compiler, value: int, node: dict) -> Check:
    return lambda x: not isinstance(x, list) or len(x) >= value


def _max_items(compiler: _Compiler, value: int, node: dict) -> Check:
    return lambda x: not isinstance(x, list) or len(x) <= value


def _if(compiler: _Compiler, value: Any, node: dict) -> Check:
    test, then, otherwise = (compiler.compile(node.get(key, True)) for key in ("if", "then", "else"))
    return lambda x: then(x) if test(x) else otherwise(x)


def _not(compiler: _Compiler, value: Any, node: dict) -> Check:
    check = compiler.compile(value)
    return lambda x: not check(x)


def _ref(compiler: _Compiler, value: str, node: dict) -> Check:
    return compiler.ref(value)


_KEYWORDS: dict[str, Callable[[_Compiler, Any, dict], Check]] = {
    "type": _type,
    "enum": _enum,
    "const": _const,
    "minimum": _minimum,
    "maximum": _maximum,
    "minLength": _min_length,
    "pattern": _pattern,
    "required": _required,
    "properties": _properties,
    "minProperties": _min_properties,
    "items": _items,
    "minItems": _min_items,
    "maxItems": _max_items,
    "if": _if,
    "not": _not,
    "$ref": _ref,
}


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
        if "properties" in sub and key in out:
            out[key] = with_defaults(sub, out[key])
    return out
