"""Layering: every project module sits in one layer and imports only from its own layer or lower ones; the core
packages never import the orchestrator (prefect), and skills stay free of torch.

The layers, lowest first, and why: docs/architecture.md ("Layers"). Every .py file under the project packages is
parsed with ``ast`` (nothing is imported), so the check also sees imports inside functions and
``if TYPE_CHECKING`` blocks. A failure lists file:line for each offending import.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NO_PREFECT = ("model", "validation", "skills", "dojo")
NO_TORCH = ("skills",)
PROJECT = ("skills", "validation", "model", "dojo", "tasks", "flows", "deployments")
# Lowest first. A module may import project modules only from its own layer or a lower one. A module's layer is
# that of its most specific prefix: dojo.config is plumbing, dojo.cli the entry point, any other dojo.* is dojo.
LAYERS = (
    ("skills", ("skills",)),
    ("plumbing", ("dojo.config", "dojo.storage", "dojo.sidecar", "dojo.objstore", "dojo.mirror")),
    ("validation", ("validation",)),
    ("model", ("model",)),
    # the Oracle (dojo serve) reads checkpoints, promotion, queue and curriculum; tasks link to its page, the stack
    # and the CLI start it
    ("dojo", ("dojo", "dojo.oracle")),
    ("tasks", ("tasks",)),
    ("flows", ("flows",)),
    ("deployments", ("deployments",)),
    ("cli", ("dojo.cli",)),
)


def literal_import(node) -> str | None:
    """The module of a literal ``importlib.import_module("x")`` / ``__import__("x")`` call, else None."""
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        func = node.func
        if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)) in ("import_module",
                                                                                             "__import__"):
            return node.args[0].value
    return None


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
        elif literal_import(node):
            found.append((node.lineno, literal_import(node)))
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


# ---------------------------------------------------------------- the layer order
def layer_of(module: str) -> tuple[int, str] | None:
    """(index, name) of ``module``'s layer — the layer of its longest matching prefix — or None."""
    best = None
    for index, (name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index, name)
    return best[1:] if best else None


def module_name(path: Path, root: Path = REPO) -> str:
    """dojo/steps.py -> dojo.steps; skills/__init__.py -> skills."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str, root: Path) -> bool:
    p = root.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def project_imports(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, module) for every import of a project module in ``path``, resolved to the module imported:
    ``from dojo import config`` is dojo.config, ``from dojo.gate import admit`` is dojo.gate; relative imports
    are resolved against the file's package; literal ``import_module("x")`` / ``__import__("x")`` count too."""
    module = module_name(path, root)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[:max(0, len(package) - node.level + 1)]     # level 1 = this package
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                found.append((node.lineno, sub if is_module(sub, root) else base))
        elif literal_import(node):
            found.append((node.lineno, literal_import(node)))
    return sorted({(line, m) for line, m in found if m.split(".")[0] in PROJECT})


def project_files(root: Path = REPO) -> list[Path]:
    return sorted(p for package in PROJECT for p in (root / package).rglob("*.py"))


def unplaced(root: Path = REPO) -> list[str]:
    """Project modules that no layer claims."""
    return [f"{p.relative_to(root)} ({module_name(p, root)})" for p in project_files(root)
            if layer_of(module_name(p, root)) is None]


def upward_imports(root: Path = REPO) -> list[str]:
    """'file:line: import X (layer A imports layer B)' for every import of a higher layer."""
    out = []
    for path in project_files(root):
        own = layer_of(module_name(path, root))
        for line, imported in project_imports(path, root):
            other = layer_of(imported)
            if own and other and other[0] > own[0]:
                out.append(f"{path.relative_to(root)}:{line}: import {imported} "
                           f"(layer {own[1]} imports layer {other[1]})")
    return out


def test_every_module_has_a_layer():
    bad = unplaced()
    assert not bad, "modules without a layer (add them to LAYERS and to docs/architecture.md):\n" + "\n".join(bad)


def test_every_package_is_layered():
    # A new top-level package would not be scanned at all: it must join PROJECT and LAYERS first.
    packages = {d.name for d in REPO.iterdir() if (d / "__init__.py").is_file()} - {"tests"}
    assert packages <= set(PROJECT), f"packages outside the layering: {sorted(packages - set(PROJECT))}"


@pytest.mark.parametrize("prefix", [p for _, prefixes in LAYERS for p in prefixes])
def test_every_layer_prefix_names_a_module(prefix):
    # Guards against a rename leaving a stale prefix, which would silently move the new module to another layer.
    assert is_module(prefix, REPO), f"LAYERS names {prefix}, which is no module"


def test_imports_only_go_down():
    bad = upward_imports()
    assert not bad, "imports of a higher layer (docs/architecture.md, Layers):\n" + "\n".join(bad)


@pytest.mark.parametrize("module, layer", [
    ("skills", "skills"), ("skills.syllo_v1", "skills"), ("dojo.config", "plumbing"), ("dojo.sidecar", "plumbing"),
    ("dojo.objstore", "plumbing"),
    ("dojo.configs", "dojo"), ("dojo", "dojo"), ("dojo.steps", "dojo"), ("dojo.cli", "cli"),
    ("validation.validate", "validation"), ("model.data", "model"), ("tasks.pipeline", "tasks"),
    ("flows.train_continuous", "flows"), ("deployments.stack", "deployments"), ("torch", None),
    ("dojo.oracle.app", "dojo"), ("model.sampling", "model"), ("model.trackers", "model"),
])
def test_layer_of_most_specific_prefix_wins(module, layer):
    found = layer_of(module)
    assert (found[1] if found else None) == layer


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_checker_catches_upward_and_accepts_downward_imports(tmp_path):
    write_tree(tmp_path, {
        "skills/__init__.py": "",
        "skills/bin.py": "import os\n",
        "dojo/__init__.py": "",
        "dojo/sidecar.py": "from skills import bin\n",                          # plumbing -> skills: down
        "dojo/steps.py": "from dojo import sidecar\nimport skills.bin\n",       # dojo -> plumbing, skills: down
        "dojo/gate.py": "from .steps import claim\nfrom .cli import main\n",    # relative: dojo, then up to cli
        "dojo/cli.py": "from dojo.steps import claim\n",                        # cli -> dojo: down
        "validation/__init__.py": "",
        "validation/validate.py": ('"""doc"""\nfrom dojo import sidecar\n\n\ndef f():\n'
                                   '    from dojo import steps\n'             # validation -> dojo: up
                                   '    from . import specs\n'),
        "validation/specs.py": "",
        "model/__init__.py": "import importlib\nimportlib.import_module('tasks.pipeline')\n",   # model -> tasks: up
        "tasks/__init__.py": "",
        "tasks/pipeline.py": "from model import data\nfrom dojo.steps import claim\n",
    })
    assert unplaced(tmp_path) == []
    assert upward_imports(tmp_path) == [
        "dojo/gate.py:2: import dojo.cli (layer dojo imports layer cli)",
        "model/__init__.py:2: import tasks.pipeline (layer model imports layer tasks)",
        "validation/validate.py:6: import dojo.steps (layer validation imports layer dojo)",
    ]


def test_checker_names_a_module_without_a_layer(tmp_path, monkeypatch):
    write_tree(tmp_path, {"dojo/__init__.py": "", "dojo/cli.py": "", "dojo/new.py": ""})
    monkeypatch.setitem(globals(), "LAYERS", (("cli", ("dojo.cli",)),))
    assert unplaced(tmp_path) == ["dojo/__init__.py (dojo)", "dojo/new.py (dojo.new)"]
