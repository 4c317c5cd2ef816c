"""Random documents for a JSON Schema, valid ones and near misses, to compare validators on.

`instance` builds a document from a schema's keywords (types, enums, bounds, patterns,
required and optional properties, conditionals); it is not a complete generator, so callers
keep only what jsonschema accepts. `mutations` derives documents one edit away from a valid
one: keys dropped or added, values of another type, out of range or emptied.
"""

from __future__ import annotations

import copy
import random
import re
import string
from re import _parser as sre_parse  # the regex parser of the standard library
from typing import Any

from jsonschema import Draft202012Validator

from vlqc.schemas import registry

_CHARS = string.ascii_letters + string.digits + "_-.，。挡风板螺丝"


def _from_pattern(pattern: str, rng: random.Random) -> str:
    """A string that `re.search(pattern)` accepts, built from the parsed pattern."""

    def build(parsed) -> str:
        out = []
        for op, arg in parsed:
            name = str(op)
            if name == "LITERAL":
                out.append(chr(arg))
            elif name == "NOT_LITERAL":
                out.append("a" if chr(arg) != "a" else "b")
            elif name == "ANY":
                out.append(rng.choice(_CHARS))
            elif name == "IN":
                out.append(_from_class(arg))
            elif name == "BRANCH":
                out.append(build(rng.choice(arg[1])))
            elif name == "SUBPATTERN":
                out.append(build(arg[-1]))
            elif name in ("MAX_REPEAT", "MIN_REPEAT"):
                low, high, sub = arg
                count = rng.randint(low, min(high, low + 3))
                out.append("".join(build(sub) for _ in range(count)))
            elif name in ("AT", "ASSERT_NOT", "ASSERT"):
                continue  # anchors; lookaheads are left to the validity filter
            else:
                raise NotImplementedError(name)
        return "".join(out)

    def _from_class(items) -> str:
        negated = any(str(op) == "NEGATE" for op, _ in items)
        if negated:
            for candidate in _CHARS:
                if re.fullmatch(f"[{_escaped(items)}]", candidate) is None:
                    return candidate
        op, arg = rng.choice([item for item in items if str(item[0]) != "NEGATE"])
        name = str(op)
        if name == "LITERAL":
            return chr(arg)
        if name == "RANGE":
            return chr(rng.randint(*arg))
        if name == "CATEGORY":
            return {"CATEGORY_DIGIT": "7", "CATEGORY_SPACE": " "}.get(str(arg), "w")
        raise NotImplementedError(name)

    def _escaped(items) -> str:
        return "".join(
            re.escape(chr(arg)) if str(op) == "LITERAL" else f"{re.escape(chr(arg[0]))}-{re.escape(chr(arg[1]))}"
            for op, arg in items
            if str(op) in ("LITERAL", "RANGE")
        )

    return build(sre_parse.parse(pattern))


class Generator:
    def __init__(self, root: dict, rng: random.Random):
        self.root, self.rng = root, rng
        self.resolver = Draft202012Validator(root, registry=registry())._resolver

    def resolve(self, node: dict) -> dict:
        resolved = self.resolver.lookup(node["$ref"])
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return self.combine(resolved.contents, rest)

    def instance(self, node: Any, depth: int = 0) -> Any:
        rng = self.rng
        if node is True or node == {}:
            return rng.choice([1, "x", None, {"k": 1}])
        if node is False:
            return None
        if "$ref" in node:
            return self.instance(self.resolve(node), depth)
        if "const" in node:
            return copy.deepcopy(node["const"])
        if "enum" in node:
            return copy.deepcopy(rng.choice(node["enum"]))
        for key in ("oneOf", "anyOf"):
            if key in node:
                rest = {k: v for k, v in node.items() if k != key}
                return self.instance(self.combine(rest, rng.choice(node[key])), depth)
        if any(key in node for key in ("allOf", "if")):
            # Conditionals: draw once without them, pick each `if` branch by that draw, then draw
            # from the schema with the chosen branches folded in, keeping the keys the `if`s looked at.
            first = self.instance(self._plain(node), depth)
            flat, kept = self.flatten(node, first)
            value = self.instance(flat, depth)
            if isinstance(value, dict) and isinstance(first, dict):
                value.update({key: first[key] for key in kept if key in first})
            return value
        kind = node.get("type")
        if isinstance(kind, list):
            kind = rng.choice(kind)
        if kind is None:
            kind = "object" if "properties" in node or "required" in node else "string" if "pattern" in node else None
        return self._typed(kind, node, depth)

    @staticmethod
    def _plain(node: dict) -> dict:
        return {k: v for k, v in node.items() if k not in ("allOf", "if", "then", "else")}

    def flatten(self, node: dict, value: Any) -> tuple[dict, set[str]]:
        """`node` without allOf / if: their subschemas folded in, each `if` decided on `value`."""
        flat, kept = self._plain(node), set()
        for sub in node.get("allOf", []):
            sub_flat, sub_kept = self.flatten(sub, value) if isinstance(sub, dict) else ({}, set())
            flat, kept = self.combine(flat, sub_flat), kept | sub_kept
        if "if" in node:
            test = Draft202012Validator(node["if"], registry=registry())
            branch = node.get("then" if test.is_valid(value) else "else", True)
            if isinstance(branch, dict):
                branch_flat, branch_kept = self.flatten(branch, value)
                flat, kept = self.combine(flat, branch_flat), kept | branch_kept
            kept |= set(node["if"].get("properties", {}))
        return flat, kept

    def combine(self, a: Any, b: Any) -> Any:
        """One schema holding the rules of `a` and `b` (as far as the generator reads them)."""
        if a is None or a is True or a == {}:
            return b
        if b is True or b == {}:
            return a
        if b is False or b == {"not": {}}:
            return b
        a = self.resolve(a) if "$ref" in a else a
        b = self.resolve(b) if "$ref" in b else b
        out = dict(a)
        for key, value in b.items():
            if key == "properties":
                props = dict(out.get("properties", {}))
                for name, sub in value.items():
                    props[name] = self.combine(props.get(name), sub)
                out["properties"] = props
            elif key == "required":
                out["required"] = sorted(set(out.get("required", [])) | set(value))
            elif key == "prefixItems":
                mine = out.get("prefixItems", [])
                size = max(len(mine), len(value))
                pad = [True] * size
                out["prefixItems"] = [
                    self.combine(x, y) for x, y in zip((mine + pad)[:size], (value + pad)[:size], strict=True)
                ]
            else:
                out[key] = value
        return out

    def _typed(self, kind: str | None, node: dict, depth: int) -> Any:
        rng = self.rng
        if kind == "null":
            return None
        if kind == "boolean":
            return rng.random() < 0.5
        if kind in ("integer", "number"):
            low = node.get("minimum", node.get("exclusiveMinimum", -5))
            high = node.get("maximum", node.get("exclusiveMaximum", low + 1000))
            if kind == "integer":
                value = rng.randint(int(low) + ("exclusiveMinimum" in node), int(high) - ("exclusiveMaximum" in node))
                step = node.get("multipleOf", 1)
                return max(step, value - value % step) if step > 1 else value
            return rng.uniform(low, high) if rng.random() < 0.7 else float(rng.randint(int(low) + 1, int(high)))
        if kind == "string":
            if "pattern" in node:
                return _from_pattern(node["pattern"], rng)
            size = rng.randint(max(node.get("minLength", 0), 1), max(node.get("minLength", 0), 1) + 8)
            return "".join(rng.choice(_CHARS) for _ in range(size))
        if kind == "array":
            items = [self.instance(sub, depth + 1) for sub in node.get("prefixItems", [])]
            extra = node.get("items", True)
            if extra is not False:
                low = max(node.get("minItems", 0) - len(items), 0)
                high = node.get("maxItems", len(items) + low + 3) - len(items)
                count = rng.randint(low, max(low, min(high, low + 3) if depth < 4 else low))
                items += [self.instance(extra, depth + 1) for _ in range(count)]
            return items
        if kind == "object":
            out = {}
            properties = node.get("properties", {})
            required = set(node.get("required", []))
            for key, sub in properties.items():
                if sub is False or sub == {"not": {}}:
                    continue  # the key must be absent
                if key in required or (depth < 5 and rng.random() < 0.7):
                    out[key] = self.instance(sub, depth + 1)
            extra = node.get("additionalProperties")
            for pattern, sub in node.get("patternProperties", {}).items():
                for _ in range(rng.randint(1, 2)):
                    out[_from_pattern(pattern, rng)] = self.instance(sub, depth + 1)
            if isinstance(extra, dict) and depth < 5:
                names = node.get("propertyNames", {})
                for _ in range(rng.randint(node.get("minProperties", 0), 2)):
                    key = (
                        _from_pattern(names["pattern"], rng)
                        if "pattern" in names
                        else self.instance({"type": "string"})
                    )
                    out[key] = self.instance(extra, depth + 1)
            return out
        return rng.choice([0, "x", None])


def instances(schema: dict, seed: int, n: int) -> list[Any]:
    """Up to `n` documents that jsonschema accepts (a few tries each)."""
    rng = random.Random(seed)
    generator = Generator(schema, rng)
    check = Draft202012Validator(schema, registry=registry())
    found = []
    for _ in range(n * 6):
        doc = generator.instance(schema)
        if check.is_valid(doc):
            found.append(doc)
            if len(found) == n:
                break
    return found


_ODD = [None, True, 0, -1, 1.5, 10**12, "", "x\n", [], {}, ["x"], {"x": 1}]


def mutations(doc: Any, rng: random.Random, depth: int = 0) -> list[Any]:
    """Documents one edit away from `doc`, at every level of nesting."""
    out = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.append({k: v for k, v in doc.items() if k != key})
            out += [{**doc, key: odd} for odd in rng.sample(_ODD, 4)]
            if depth < 4:
                out += [{**doc, key: inner} for inner in mutations(value, rng, depth + 1)]
        out.append({**doc, "unknown_key": 1})
    elif isinstance(doc, list):
        if doc:
            out += [doc[1:], doc + doc[:1]]
            if depth < 4:
                out += [[inner, *doc[1:]] for inner in mutations(doc[0], rng, depth + 1)]
        out.append([*doc, rng.choice(_ODD)])
    elif isinstance(doc, str):
        out += ["", doc + "\n", doc[: len(doc) // 2], 7]
    elif isinstance(doc, bool):
        out += [not doc, int(doc)]
    elif isinstance(doc, (int, float)):
        out += [-doc - 1, doc + 0.5, float(doc), str(doc), True]
    return out
