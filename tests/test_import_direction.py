"""Imports only go down: nothing under lead/ imports an orchestrator, the tracking library, or the layers
above it (storage, tasks, flows); checked on the syntax tree of every file, function-level imports and
``importlib.import_module("...")`` calls with a literal name included."""

from __future__ import annotations

import ast
from pathlib import Path

import lead

#: Top-level packages lead/ must never import (docs/architecture.md, "Layers").
FORBIDDEN = ("prefect", "mlflow", "storage", "tasks", "flows")
LEAD_DIR = Path(lead.__file__).parent


def package_of(path: Path) -> str:
    """The dotted package a file of lead/ belongs to (``lead.weights`` for lead/weights/file.py)."""
    return ".".join(path.relative_to(LEAD_DIR.parent).with_suffix("").parts[:-1])


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth; relative imports are
    resolved against ``package``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            else:
                found.append((node.lineno, node.module or ""))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return sorted(found)


def test_the_walker_sees_every_kind_of_import(tmp_path):
    probe = tmp_path / "probe.py"
    source = ("import os\nfrom storage import files\n\ndef f():\n    import prefect.task_runners\n"
              "    from . import zoo\n    import importlib\n    return importlib.import_module('mlflow')\n")
    probe.write_text(source)
    assert imported_modules(probe, "lead") == [(1, "os"), (2, "storage"), (5, "prefect.task_runners"), (6, "lead"),
                                               (7, "importlib"), (8, "mlflow")]
    assert package_of(LEAD_DIR / "weights" / "file.py") == "lead.weights"


def test_lead_imports_no_orchestrator_tracking_storage_tasks_or_flows():
    files = sorted(LEAD_DIR.rglob("*.py"))
    assert len(files) > 30 and LEAD_DIR / "benchbuild.py" in files and LEAD_DIR / "weights" / "file.py" in files
    bad = [f"{path.relative_to(LEAD_DIR.parent)}:{line}: {module}"
           for path in files for line, module in imported_modules(path, package_of(path))
           if module.split(".")[0] in FORBIDDEN]
    assert bad == [], "lead/ must not import " + ", ".join(FORBIDDEN) + "; got:\n" + "\n".join(bad)
