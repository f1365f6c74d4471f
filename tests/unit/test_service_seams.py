"""The wiring stays typed: services reach the engine only through `daemon_app.host.Host` and their
peers only through the narrow protocols given to their constructors (docs/architecture.md).

Read from the source with ast, like the import-cycle check: nothing is imported or run.
"""

from __future__ import annotations

import ast

from daemon_app import config, host
from daemon_app.engine import Engine
from daemon_app.plugins import Plugins
from tests.helpers import base_config
from tests.unit.test_import_cycles import import_graph, module_files

# Names under which one part holds another; none of them may be typed Any.
SERVICE_REFS = {"engine", "host", "agent", "manager", "link", "updates", "remote_config", "supervisor",
                "config_pushes", "config_hashes"}


def _any_typed_refs(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.arg in SERVICE_REFS and node.annotation is not None:
            if ast.unparse(node.annotation) in ("Any", "typing.Any"):
                found.append(f"parameter {node.arg} (line {node.lineno})")
        if isinstance(node, ast.AnnAssign):
            name = ast.unparse(node.target).split(".")[-1]
            if name.lstrip("_") in SERVICE_REFS and ast.unparse(node.annotation) in ("Any", "typing.Any"):
                found.append(f"attribute {ast.unparse(node.target)} (line {node.lineno})")
    return found


def test_the_checker_sees_an_any_typed_reference():
    tree = ast.parse("class S:\n"
                     "    def __init__(self, engine: Any) -> None:\n"
                     "        self.agent: Any = None\n")
    assert sorted(_any_typed_refs(tree)) == ["attribute self.agent (line 3)", "parameter engine (line 2)"]
    assert _any_typed_refs(ast.parse("def f(host: Host, agent: Peer[AgentControl]) -> None: ...")) == []


def test_no_service_reference_is_typed_any():
    problems = []
    for module, path in module_files().items():
        problems += [f"{module}: {p}" for p in _any_typed_refs(ast.parse(path.read_text(encoding="utf-8")))]
    assert problems == []


def test_only_the_command_line_builds_an_engine():
    """Services get a Host; none of them imports the engine (the CLI's `run` builds it)."""
    graph = import_graph(module_level_only=False)
    importers = sorted(m for m, deps in graph.items() if "daemon_app.engine" in deps)
    assert importers == ["daemon_app.cli"]


def test_the_engine_has_everything_the_host_protocol_names(tmp_path):
    engine = Engine(config.validate(base_config(tmp_path)), Plugins())
    wanted = {name for name in vars(host.Host) if not name.startswith("_")}
    assert {"cfg", "node_id", "plugins", "reports_built", "run_soon", "on_command", "busy"} <= wanted
    assert sorted(name for name in wanted if not hasattr(engine, name)) == []
