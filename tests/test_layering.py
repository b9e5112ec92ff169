"""Layering: the core packages never import the orchestrator (prefect), and skills stay free of torch.

Every .py file under the guarded packages is parsed with ``ast`` (nothing is imported), so the check also sees
imports inside functions and ``if TYPE_CHECKING`` blocks. A failure lists file:line for each offending import.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NO_PREFECT = ("model", "validation", "skills", "dojo")
NO_TORCH = ("skills",)


def imported_modules(source: str, filename: str = "<string>") -> list[tuple[int, str]]:
    """(line, dotted module name) for every import in ``source``: import/from statements plus literal
    ``importlib.import_module("x")`` and ``__import__("x")`` calls."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:   # relative imports stay inside the package
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def violations(packages, banned: str, root: Path = REPO) -> list[str]:
    """'file:line: import NAME' for every import of ``banned`` (or a submodule) under ``packages``."""
    out = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            for line, module in imported_modules(path.read_text(encoding="utf-8"), str(rel)):
                if module == banned or module.startswith(banned + "."):
                    out.append(f"{rel}:{line}: import {module}")
    return out


def python_files(packages) -> list[Path]:
    return [p for package in packages for p in (REPO / package).rglob("*.py")]


@pytest.mark.parametrize("package", NO_PREFECT)
def test_guarded_packages_exist_and_have_code(package):
    # Guards against the scan silently passing because a folder moved or was renamed.
    assert (REPO / package).is_dir(), f"{package}/ is missing"
    assert python_files([package]), f"no .py files under {package}/"


def test_core_packages_never_import_prefect():
    bad = violations(NO_PREFECT, "prefect")
    assert not bad, "the core must not import prefect (orchestration lives in flows/ and tasks/):\n" + "\n".join(bad)


def test_skills_never_import_torch():
    bad = violations(NO_TORCH, "torch")
    assert not bad, "skills/ must stay free of torch:\n" + "\n".join(bad)


@pytest.mark.parametrize("source", [
    "import prefect",
    "import prefect.flows as f",
    "import os, prefect",
    "from prefect import flow",
    "from prefect.tasks import task",
    "def f():\n    import prefect\n",
    "try:\n    from prefect import get_run_logger\nexcept ImportError:\n    pass\n",
    "import importlib\nimportlib.import_module('prefect')\n",
    "__import__('prefect.client')",
])
def test_detector_catches_prefect_imports(source):
    assert any(m == "prefect" or m.startswith("prefect.") for _, m in imported_modules(source))


@pytest.mark.parametrize("source", [
    "import prefect_like",
    "from prefectural import x",
    "from . import prefect",          # a local module of that name, not the package
    "x = 'import prefect'",
])
def test_detector_ignores_lookalikes(source):
    assert not any(m == "prefect" or m.startswith("prefect.") for _, m in imported_modules(source))


def test_violation_report_names_file_and_line(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "ok.py").write_text("import os\n")
    (pkg / "bad.py").write_text('"""doc"""\n\nfrom prefect import flow\n')
    assert violations(["pkg"], "prefect", root=tmp_path) == ["pkg/bad.py:3: import prefect"]
