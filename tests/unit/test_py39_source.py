"""daemon_app runs on CPython 3.9 (the pyz, docs/pyz.md): no construct that only a newer Python runs.

`from __future__ import annotations` keeps `X | None` in annotations harmless, and ruff's py39
target catches newer syntax; what neither sees is a newer feature evaluated at run time, such as
`isinstance(x, int | float)` (a TypeError on 3.9, found once in the Manager link by the Debian 11
compat run). This walks every module's AST for those constructs, so the mistake fails here in
milliseconds instead of only inside a chroot.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DAEMON_APP = Path(__file__).resolve().parents[2] / "daemon_app"
SOURCES = sorted(p for p in DAEMON_APP.rglob("*.py") if "proto" not in p.parts)


def _is_union(node: ast.AST) -> bool:
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)


def newer_than_39(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Match):
            found.append((node.lineno, "match statement (3.10)"))
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name in ("isinstance", "issubclass") and len(node.args) == 2 and _is_union(node.args[1]):
                found.append((node.lineno, f"{name}(x, A | B) (3.10)"))
            if name == "zip" and any(k.arg == "strict" for k in node.keywords):
                found.append((node.lineno, "zip(strict=) (3.10)"))
            if name == "dataclass" and any(k.arg in ("slots", "kw_only") for k in node.keywords):
                found.append((node.lineno, "dataclass(slots=/kw_only=) (3.10)"))
        elif isinstance(node, ast.ImportFrom) and node.module == "datetime" and \
                any(a.name == "UTC" for a in node.names):
            found.append((node.lineno, "datetime.UTC (3.11): use daemon_app.compat.UTC"))
        elif isinstance(node, ast.Attribute) and node.attr == "UTC" and \
                getattr(node.value, "id", "") == "datetime":
            found.append((node.lineno, "datetime.UTC (3.11): use daemon_app.compat.UTC"))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if "tomllib" in names:
                found.append((node.lineno, "tomllib (3.11)"))
        elif isinstance(node, ast.TryStar if hasattr(ast, "TryStar") else ()):
            found.append((node.lineno, "except* (3.11)"))
    # A union as a value (not an annotation) at module level is evaluated at import.
    for stmt in getattr(tree, "body", []):
        if isinstance(stmt, ast.Assign) and _is_union(stmt.value) and \
                all(isinstance(s, (ast.Name, ast.Attribute, ast.Subscript)) for s in (stmt.value.left,
                                                                                     stmt.value.right)):
            found.append((stmt.lineno, "type alias X = A | B evaluated at import (3.10)"))
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(DAEMON_APP)))
def test_daemon_app_module_uses_nothing_newer_than_python_39(path: Path) -> None:
    found = newer_than_39(ast.parse(path.read_text(), str(path)))
    assert not found, "\n".join(f"{path}:{line}: {what}" for line, what in found)


@pytest.mark.parametrize("source", [
    "isinstance(v, int | float)", "from datetime import UTC", "import datetime\ndatetime.UTC",
    "zip(a, b, strict=True)", "match x:\n    case 1:\n        pass", "Number = int | float",
])
def test_the_check_finds_each_newer_construct(source: str) -> None:
    assert newer_than_39(ast.parse(source))


def test_annotations_and_tuples_are_fine() -> None:
    source = "def f(x: int | None) -> str | None: ...\nisinstance(x, (int, float))"
    assert not newer_than_39(ast.parse(source))
