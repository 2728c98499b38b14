"""The one import rule: models/ and pipelines/ never import prefect, ray or mlflow (nor flows/ or infra/)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"prefect", "ray", "mlflow", "flows", "infra"}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                roots.add(arg.value.split(".")[0])
    return roots


@pytest.mark.parametrize("package", ["models", "pipelines"])
def test_pure_layers_never_import_orchestration(package):
    offenders = {}
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no python files under {package}/"
    for path in files:
        bad = imported_roots(path) & FORBIDDEN
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_the_checker_catches_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import ray.train\nfrom prefect import flow\nx = __import__('mlflow.tracking')\nfrom . import ok\n")
    assert imported_roots(bad) >= {"ray", "prefect", "mlflow"}
