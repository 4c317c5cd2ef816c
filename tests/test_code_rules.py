"""House rules of the code that a reader would otherwise have to check by eye (DESIGN: "No `except
Exception: pass`"): an AST scan of src/ for handlers that swallow every error and do nothing."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

# Handlers of these catch every error; one whose body does nothing hides bugs and lost data.
CATCH_ALL = {"Exception", "BaseException"}


def _names(node: ast.expr | None) -> set[str]:
    """The exception names a handler's type names (`except (A, b.B)` → {A, B})."""
    if node is None:
        return set()
    if isinstance(node, ast.Tuple):
        return set().union(*map(_names, node.elts))
    if isinstance(node, ast.Attribute):
        return {node.attr}
    if isinstance(node, ast.Name):
        return {node.id}
    return set()


def _does_nothing(body: list[ast.stmt]) -> bool:
    """Only `pass`, `...` or a bare string."""
    return all(
        isinstance(statement, ast.Pass)
        or (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant))
        for statement in body
    )


def swallowed(source: str, name: str = "<source>") -> list[str]:
    """`name:line` of each bare `except:`, `except Exception:` or `except BaseException:` (alone or in a tuple)
    whose body does nothing."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if not isinstance(node, ast.ExceptHandler) or not _does_nothing(node.body):
            continue
        if node.type is None or _names(node.type) & CATCH_ALL:
            found.append(f"{name}:{node.lineno}")
    return found


def test_src_swallows_no_error_silently():
    files = sorted((REPO / "src").rglob("*.py"))
    assert len(files) > 20, "the scan sees the package"
    found = [hit for path in files for hit in swallowed(path.read_text(encoding="utf-8"), _relative(path))]
    assert found == [], "catch-all handlers that do nothing (log, narrow the type, or re-raise)"


def test_the_scan_catches_every_silent_catch_all():
    source = """
try:
    a()
except Exception:
    pass
try:
    b()
except:
    ...
try:
    c()
except (ValueError, BaseException):
    "ignored"
try:
    d()
except builtins.Exception:
    pass
"""
    assert swallowed(source) == ["<source>:4", "<source>:8", "<source>:12", "<source>:16"]


def test_the_scan_leaves_narrow_or_handled_catches_alone():
    source = """
try:
    a()
except OSError:
    pass
try:
    b()
except Exception:
    log.warning("best effort: %s", b)
try:
    c()
except BaseException:
    cleanup()
    raise
"""
    assert swallowed(source) == []


def _relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()
