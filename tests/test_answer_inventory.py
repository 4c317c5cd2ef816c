"""No code in src/ decodes model text on its own: every `json.loads` / `json.load` / `json.JSONDecoder` /
`ast.literal_eval` is in vlqc.inference.answers (docs/answers.md) or in a file reader listed below.

A new direct parse fails this test. If it reads a file (not model text), add it to FILE_READERS with the
reason; if it reads what a model wrote, move the decoding into vlqc.inference.answers.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ANSWERS = "vlqc/inference/answers.py"
PARSERS = {("json", "loads"), ("json", "load"), ("json", "JSONDecoder"), ("ast", "literal_eval")}

# (file under src/, enclosing function) → why it may parse JSON itself: what it reads is a file, a
# command-line argument or a schema, never a model's answer.
FILE_READERS = {
    ("vlqc/jsonl.py", "read_jsonl"): "the JSONL reader every artifact goes through (schema-checked)",
    ("vlqc/jsonl.py", "read_json"): "the JSON document reader every artifact goes through (schema-checked)",
    ("vlqc/schemas.py", "load"): "the JSON Schemas under schemas/",
    ("vlqc/config_reference.py", "render"): "the config schema, to render the README's config reference",
    ("vlqc/cli.py", "json_object"): "a JSON command-line argument",
    ("vlqc/train/config.py", "_read"): "a training config file (JSON or YAML)",
    ("vlqc/train/config.py", "max_positions"): "a model folder's config.json",
    ("vlqc/train/stage2/trainer.py", "settings_from_env"): "the run's stage2_ab settings, written by vlqc.train.run",
    ("vlqc/data/export.py", "load_export"): "an annotation export file",
    ("vlqc/stage_a/infer.py", "ResumeLog.load"): "Stage-A's resume log, written by Stage-A itself",
    ("vlqc/stage_a/merge.py", "_rows"): "Stage-A rank files (the model's text stays a string inside)",
    ("vlqc/stage_b/tickets.py", "_record"): "Stage-A output lines (the model's text stays a string inside)",
}


def direct_parses(source: str) -> list[tuple[str, int, str]]:
    """(enclosing function, line, what) for each use of a JSON/literal parser in Python `source`, whether
    called or passed on (`map(json.loads, …)`), through `import json as j` or `from json import loads`."""
    tree = ast.parse(source)
    modules: dict[str, str] = {}  # local name → module, for `import json [as j]`
    functions: dict[str, str] = {}  # local name → "module.attr", for `from json import loads [as l]`
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update({alias.asname or alias.name: alias.name for alias in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module in {module for module, _ in PARSERS}:
            for alias in node.names:
                if (node.module, alias.name) in PARSERS:
                    functions[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found: list[tuple[str, int, str]] = []

    def visit(node: ast.AST, scope: tuple[str, ...]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            scope = (*scope, node.name)
        what = None
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = modules.get(node.value.id)
            if (module, node.attr) in PARSERS:
                what = f"{module}.{node.attr}"
        elif isinstance(node, ast.Name) and node.id in functions:
            what = functions[node.id]
        if what:
            found.append((".".join(scope) or "<module>", node.lineno, what))
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(tree, ())
    return found


def sources() -> dict[str, str]:
    """Every Python file under src/, by its path below src/."""
    return {path.relative_to(SRC).as_posix(): path.read_text(encoding="utf-8") for path in sorted(SRC.rglob("*.py"))}


def inventory(files: Mapping[str, str]) -> dict[tuple[str, str], list[str]]:
    """Every direct parse in `files` (path below src/ → source) outside vlqc.inference.answers, by (file, function)."""
    sites: dict[tuple[str, str], list[str]] = {}
    for rel, source in files.items():
        if rel == ANSWERS:
            continue
        for scope, line, what in direct_parses(source):
            sites.setdefault((rel, scope), []).append(f"src/{rel}:{line}: {what}")
    return sites


def violations(files: Mapping[str, str]) -> list[str]:
    """The direct parses of `files` that neither vlqc.inference.answers nor a listed file reader makes."""
    return [hit for site, hits in inventory(files).items() if site not in FILE_READERS for hit in hits]


def test_model_text_is_decoded_only_in_answers():
    unlisted = violations(sources())
    assert not unlisted, (
        "direct JSON parsing outside vlqc.inference.answers; decode model text there, "
        f"or list a file reader in FILE_READERS with the reason: {unlisted}"
    )


def test_every_listed_reader_still_parses():
    stale = sorted(set(FILE_READERS) - set(inventory(sources())))
    assert not stale, f"FILE_READERS entries with no parse left (remove them): {stale}"


NEW_PARSE = "import json\n\n\ndef read_answer(text):\n    return json.loads(text)\n"


def test_a_new_direct_parse_is_a_violation():
    assert violations({"vlqc/stage_b/engine.py": NEW_PARSE}) == ["src/vlqc/stage_b/engine.py:5: json.loads"]
    assert violations({ANSWERS: NEW_PARSE}) == []
    # A listed file is allowed only its listed reader: a second parse in it is caught.
    reader = "import json\n\n\ndef read_jsonl(path):\n    return json.loads(path)\n\n\n"
    assert violations({"vlqc/jsonl.py": reader}) == []
    assert violations({"vlqc/jsonl.py": reader + NEW_PARSE.replace("import json\n", "")}) == [
        "src/vlqc/jsonl.py:11: json.loads"
    ]


def test_answers_is_where_the_parsing_is():
    uses = {what for _, _, what in direct_parses((SRC / ANSWERS).read_text(encoding="utf-8"))}
    assert {"json.loads", "json.JSONDecoder"} <= uses


def test_the_scanner_finds_every_spelling_of_a_parse():
    source = """
import ast
import json
import json as j
from json import loads as parse, JSONDecoder
from ast import literal_eval


def read(text):
    return json.loads(text)


class Engine:
    def answer(self, text):
        return j.load(text), parse(text), list(map(json.loads, [text]))

    def other(self, text):
        return JSONDecoder().raw_decode(text), literal_eval(text), ast.literal_eval(text)


TOP = json.loads("{}")
"""
    found = [(scope, what) for scope, _, what in direct_parses(source)]
    assert found == [
        ("read", "json.loads"),
        ("Engine.answer", "json.load"),
        ("Engine.answer", "json.loads"),
        ("Engine.answer", "json.loads"),
        ("Engine.other", "json.JSONDecoder"),
        ("Engine.other", "ast.literal_eval"),
        ("Engine.other", "ast.literal_eval"),
        ("<module>", "json.loads"),
    ]
    # Writing JSON, and a local function that happens to be called `loads`, are not parses.
    assert direct_parses("import json\n\ndef f(x, loads):\n    return json.dumps(x), loads(x)\n") == []
