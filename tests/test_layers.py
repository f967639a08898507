"""docs/ARCHITECTURE.md §1: layers point one way. cvcore imports neither prefect nor mlflow; tasks never flows;
the tests of a layer import no layer above it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found |= {(str(path), a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path), node.module.split(".")[0]))
    return found


def test_cvcore_source_imports_neither_prefect_nor_mlflow():
    bad = sorted((p, m) for p, m in _imports("cvcore") if m in {"prefect", "mlflow", "tasks", "flows"})
    assert not bad, f"cvcore must stay free of prefect/mlflow/tasks/flows: {bad}"


def test_tasks_never_import_flows():
    bad = sorted((p, m) for p, m in _imports("tasks") if m == "flows")
    assert not bad, f"tasks must not import flows: {bad}"


def test_tests_import_no_layer_above_the_one_they_test():
    bad = sorted((p, m) for p, m in _imports("tests/cvcore") if m in {"prefect", "mlflow", "tasks", "flows"})
    bad += sorted((p, m) for p, m in _imports("tests/tasks") if m == "flows")
    assert not bad, f"tests/cvcore may import only cvcore, tests/tasks not flows: {bad}"


def test_importing_all_of_cvcore_loads_neither_prefect_nor_mlflow():
    code = (
        "import pkgutil, importlib, sys, cvcore\n"
        "for m in pkgutil.walk_packages(cvcore.__path__, 'cvcore.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in ('prefect', 'mlflow') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
