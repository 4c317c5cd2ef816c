"""Every default has one home, the JSON Schemas in schemas/: scripts take settings, not argparse
defaults, and library code reads a default from the schema instead of writing the value again."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from conftest import REPO

from vlqc.schemas import SCHEMA_DIR

# Parameters named like a schema property that are not that setting.
NOT_SETTINGS = {
    ("src/vlqc/jsonl.py", "mode"): "the file mode of atomic_open, not convert.mode",
    ("src/vlqc/evaluation/grounding.py", "images"): "a tally's count of photos scored, not eval.grounding.images",
    ("src/vlqc/inference/prompts.py", "no_mission"): "a prompt names its mission unless told otherwise",
    # One generate call's decoding values: greedy, no nucleus, no penalty are its neutral choices;
    # every pipeline caller passes its configured values.
    ("src/vlqc/inference/sampling.py", "max_new_tokens"): "",
    ("src/vlqc/inference/sampling.py", "temperature"): "",
    ("src/vlqc/inference/sampling.py", "top_p"): "",
    ("src/vlqc/inference/sampling.py", "repetition_penalty"): "",
    (
        "src/vlqc/stage_b/rollout.py",
        "seed",
    ): "a sampler grid entry's own seed (0 unless it names one), not stage_b.seed",
}


def schema_defaults() -> set[str]:
    """Names of every property, in any schema, that has a default."""
    names: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for key, sub in node.get("properties", {}).items():
                if isinstance(sub, dict) and "default" in sub:
                    names.add(key)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in SCHEMA_DIR.glob("*.schema.json"):
        walk(json.loads(path.read_text(encoding="utf-8")))
    return names


def _literal(node: ast.expr) -> bool:
    try:
        return ast.literal_eval(node) is not None
    except ValueError:
        return False  # computed: read from the schema, or a constant of the module


def argparse_defaults(source: str) -> list[str]:
    """`--option (line)` of every add_argument call that gives a default."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            if any(keyword.arg == "default" for keyword in node.keywords):
                name = next((a.value for a in node.args if isinstance(a, ast.Constant)), "?")
                found.append(f"{name} (line {node.lineno})")
    return found


def restated_defaults(source: str, settings: set[str]) -> list[tuple[str, int]]:
    """(name, line) of each class field or attribute, or function parameter, named like a schema setting
    whose default is a literal value (None, "not set", is allowed)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        pairs: list[tuple[str, ast.expr]] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs += zip([a.arg for a in positional[len(positional) - len(args.defaults) :]], args.defaults)
            pairs += [(a.arg, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
        elif isinstance(node, ast.ClassDef):
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name) and statement.value:
                    pairs.append((statement.target.id, statement.value))
                elif isinstance(statement, ast.Assign):  # a class attribute: `compile = "auto"`
                    pairs += [
                        (target.id, statement.value) for target in statement.targets if isinstance(target, ast.Name)
                    ]
        found += [(name, value.lineno) for name, value in pairs if name in settings and _literal(value)]
    return found


def _files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("script", _files("scripts"), ids=lambda p: p.name)
def test_scripts_define_no_argparse_defaults(script):
    # Settings come as --settings (one config section, checked and defaulted by vlqc.cli);
    # the other arguments are paths and wildcards, required or absent.
    assert argparse_defaults(script.read_text(encoding="utf-8")) == []


def test_library_reads_defaults_from_the_schema():
    settings = schema_defaults()
    found = []
    for path in _files("src/vlqc"):
        relative = path.relative_to(REPO).as_posix()
        for name, line in restated_defaults(path.read_text(encoding="utf-8"), settings):
            if (relative, name) not in NOT_SETTINGS:
                found.append(f"{relative}:{line}: {name}")
    assert found == []


def test_the_checks_catch_a_restated_default():
    assert {"max_pixels", "workers", "mode_seed", "sample_seed", "fail_fraction"} <= schema_defaults()
    script = 'parser.add_argument("--max-pixels", type=int, default=786432)\nparser.add_argument("--out")\n'
    assert argparse_defaults(script) == ["--max-pixels (line 1)"]
    library = (
        "@dataclass\nclass Settings:\n    max_pixels: int = 786432\n    factor: int = DEFAULTS['factor']\n"
        "    checkpoint: str | None = None\n"
        "def convert(root, workers=2, mode=DEFAULTS['mode'], *, jpeg_quality=92): ...\n"
        "class Engine:\n    compile = 'auto'\n    wave_rows = None\n    prefill_tokens = 16384\n"
    )
    assert restated_defaults(library, schema_defaults()) == [
        ("max_pixels", 3),
        ("workers", 6),
        ("jpeg_quality", 6),
        ("compile", 8),
    ]


def test_the_checks_cover_stage_b():
    scanned = {path.relative_to(REPO).as_posix() for path in _files("scripts") + _files("src/vlqc")}
    assert {"scripts/stage_b.py", "src/vlqc/stage_b/engine.py", "src/vlqc/inference/fast_generation.py"} <= scanned
    engine = (REPO / "src/vlqc/stage_b/engine.py").read_text(encoding="utf-8")
    restated = engine.replace('logging_steps: int = DEFAULTS["logging_steps"]', "logging_steps: int = 8")
    assert restated != engine and [name for name, _ in restated_defaults(restated, schema_defaults())] == [
        "logging_steps"
    ]
    script = (REPO / "scripts/stage_b.py").read_text(encoding="utf-8")
    restated = script.replace('"--missions", type=Path, required=True', '"--missions", type=Path, default=Path("m")')
    assert restated != script and [found.split()[0] for found in argparse_defaults(restated)] == ["--missions"]
