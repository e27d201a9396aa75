"""The package's import graph: no circles (imports inside functions counted too), and the orchestrating
modules (reconstruct, resolution, cli) imported by nothing below them."""

from __future__ import annotations

import ast
from pathlib import Path

import ptytomo

PACKAGE = Path(ptytomo.__file__).parent
# The modules that orchestrate the others, each imported only by the ones listed (those above it).
ORCHESTRATORS = {"ptytomo.reconstruct": {"ptytomo.resolution", "ptytomo.cli"},
                 "ptytomo.resolution": {"ptytomo.cli"}, "ptytomo.cli": {"ptytomo.__main__"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every ptytomo module -> the ptytomo modules it imports anywhere in its text (``from pkg import sub``
    counts as importing ``pkg.sub`` when that is a module, else ``pkg``)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{module}.{alias.name}"
                    deps.add(target if target in paths else module)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in paths and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circles():
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    assert cycles(graph) == []


def test_a_circle_is_found():
    """The check itself: a graph with a circle through function-level imports is caught."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_below_the_orchestrators_imports_them():
    graph = import_graph()
    for orchestrator, allowed in ORCHESTRATORS.items():
        importers = {name for name, deps in graph.items() if orchestrator in deps}
        assert importers <= allowed, (orchestrator, importers - allowed)
