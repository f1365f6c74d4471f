"""No import cycles in daemon_app: each part can be read, loaded and tested from the bottom up.

The graph is read from the source with ast (nothing is imported). Two graphs are checked: the
imports at module level (a cycle there can break at import time) and every import, including the
ones deferred into functions to keep heavy modules off the idle path (a cycle there is still two
parts that need each other). Imports under `if TYPE_CHECKING:` are annotations only and skipped.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = "daemon_app"


def module_files() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(body: list[ast.stmt], module_level_only: bool) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if _is_type_checking(node):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
            continue
        nested = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
        if nested and module_level_only:
            # A class body runs at import time; a function body does not.
            if isinstance(node, ast.ClassDef):
                stack.extend(node.body)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        names = [f"{base}.{alias.name}" for alias in node.names]
        names.append(base)
    out = set()
    for name in names:
        while name and name not in known:  # `from pkg import name` names a module or an attribute
            name = name.rpartition(".")[0]
        if name and name != module and name != PACKAGE:
            out.add(name)
    return out


def import_graph(module_level_only: bool) -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        deps: set[str] = set()
        for node in _imports(tree.body, module_level_only):
            deps |= _targets(module, path.name == "__init__.py", node, known)
        graph[module] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_checker_sees_a_cycle_and_deferred_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    # It reads real imports: the engine defers the supervisor's import into a function.
    assert "daemon_app.agent.supervisor" not in import_graph(module_level_only=True)["daemon_app.engine"]
    assert "daemon_app.agent.supervisor" in import_graph(module_level_only=False)["daemon_app.engine"]
    assert "daemon_app.errors" in import_graph(module_level_only=True)["daemon_app.agent.process"]


def test_no_import_cycles_at_module_level():
    cycle = find_cycle(import_graph(module_level_only=True))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycles_counting_imports_deferred_into_functions():
    cycle = find_cycle(import_graph(module_level_only=False))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
