"""The package map of docs/architecture.md, enforced: imports run down the pipeline, never up or in a
circle, and only the layers that need torch import it at module level."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import simgen

ROOT = Path(simgen.__file__).parent

# Lower layers never import higher ones (docs/architecture.md draws the same order).
LAYERS = [
    {"config", "data", "interrupts"},
    {"folders"},
    {"render"},
    {"synth", "recon", "splat"},
    {"export", "eval"},
    {"serve"},
    {"sim"},
    {"pipeline", "api", "batch", "label"},
    {"cli"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _imports() -> list[tuple[str, str, int]]:
    """(importing top-level unit, imported unit, line) for every ``simgen.*`` import in the package."""
    found = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts == ("__init__.py",) or rel.parts == ("__main__.py",):
            continue  # the lazy public API and `python -m simgen` sit above everything
        unit = rel.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] if node.module != "simgen" else [f"simgen.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "simgen" and len(parts) > 1 and parts[1] != "__version__":
                    found.append((f"{rel}", unit, parts[1], node.lineno))
    return found


def test_every_unit_has_a_layer():
    units = {p.name.removesuffix(".py") for p in ROOT.iterdir() if p.suffix == ".py" or p.is_dir()}
    units -= {"__init__", "__main__", "__pycache__", "py.typed", "static"}
    assert units <= set(LAYER), f"add {sorted(units - set(LAYER))} to LAYERS and docs/architecture.md"


def test_imports_never_run_upward():
    upward = [
        f"{file}:{line} ({unit}) imports simgen.{target}"
        for file, unit, target, line in _imports()
        if target in LAYER and LAYER[target] > LAYER[unit]
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles_between_packages():
    graph: dict[str, set[str]] = {}
    for _, unit, target, _ in _imports():
        if target != unit:
            graph.setdefault(unit, set()).add(target)

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        for n in graph.get(a, ()):
            if n == b or (n not in seen and reaches(n, b, seen | {n})):
                return True
        return False

    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a, {b}))
    assert not cycles, cycles


def test_folder_contract_and_server_stay_torch_free():
    """The folder contract, the scene format and the mesh server must not import torch at module level
    (a mesh-only render server starts without it)."""
    for sub in (
        "folders.py",
        "data",
        "serve",
        "render/caster.py",
        "render/zbuffer.py",
        "render/raycast.py",
        "render/mesh.py",
    ):
        for path in [ROOT / sub] if sub.endswith(".py") else (ROOT / sub).rglob("*.py"):
            tree = ast.parse(path.read_text())
            top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
            mods = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
            mods |= {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
            assert not {m for m in mods if m.split(".")[0] == "torch"}, (
                f"{path} imports torch at module level"
            )


def test_test_modules_share_code_only_through_helpers():
    """Shared test code lives in tests/helpers or conftest.py; a test module imported by another runs
    its module fixtures and tests twice over and ties the two modules' order together."""
    tests = Path(__file__).parent
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            assert not [n for n in names if n.split(".")[0].startswith("test_")], (
                f"{path.name}:{node.lineno} imports a test module; move the shared code to tests/helpers"
            )


@pytest.mark.slow
def test_public_api_type_checks(monkeypatch):
    """mypy on the files pyproject's [tool.mypy] lists (the public API and the folder contract)."""
    from mypy import api

    root = ROOT.parent
    monkeypatch.chdir(root)  # [tool.mypy] files are relative to the repository
    stdout, stderr, status = api.run(["--config-file", str(root / "pyproject.toml"), "--no-incremental"])
    assert status == 0, stdout + stderr


def test_scripts_name_tests_that_exist():
    """scripts/gpu-check.sh runs named tests on a GPU machine nobody has at hand: a renamed test module must
    not turn that one call into 'file not found'."""
    import re

    repo = ROOT.parent
    for script in sorted((repo / "scripts").glob("*.sh")):
        for path, name in re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", script.read_text()):
            assert (repo / path).is_file(), f"{script.name} names {path}, which does not exist"
            if name:
                assert f"def {name}(" in (repo / path).read_text(), f"{script.name} names {path}::{name}"
