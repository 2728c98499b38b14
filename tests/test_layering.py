"""The import rules (ARCHITECTURE §2): each layer imports only the layers below it, the pure layers (models/,
pipelines/, recipes/) never import prefect, ray or mlflow, and no first-party modules import each other in a cycle
(imports inside functions count: a cycle there is the same tangle, only deferred)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATION = {"prefect", "ray", "mlflow"}
#: layer → what it may never import (the layers above it, and orchestration for the pure ones)
FORBIDDEN: dict[str, set[str]] = {
    "models": ORCHESTRATION | {"pipelines", "recipes", "infra", "flows"},
    "pipelines": ORCHESTRATION | {"recipes", "infra", "flows"},
    "recipes": ORCHESTRATION | {"infra", "flows"},
    "infra": {"flows"},
}
PACKAGES = ("models", "pipelines", "recipes", "infra", "flows")


def imported_names(path: Path) -> set[str]:
    """Every absolute dotted name `path` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value)
    return names


def imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_names(path)}


def module_graph() -> dict[str, set[str]]:
    """First-party module → the first-party modules it imports (a package's ``__init__`` is the package's name;
    ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module, else ``pkg``)."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for imported in imported_names(path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    # `from pkg import sub` also names `pkg`; drop that edge where the submodule itself is imported
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not any(o.startswith(t + ".") for o in targets) or t == name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_layer_imports_only_the_layers_below(package: str) -> None:
    offenders = {}
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no python files under {package}/"
    for path in files:
        bad = imported_roots(path) & FORBIDDEN[package]
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_no_import_cycles() -> None:
    assert cycles(module_graph()) == []


def test_the_checkers_catch_violations(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import ray.train\nfrom prefect import flow\nx = __import__('mlflow.tracking')\nfrom . import ok\n")
    assert imported_roots(bad) >= {"ray", "prefect", "mlflow"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
