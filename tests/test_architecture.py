"""The folders show the architecture: no import cycles, dependencies point one way.

Every module of `lib` is parsed (imports inside functions included) into a graph of lib
modules; the graph must have no cycle, and an import between subpackages must be one that
`ALLOWED` permits (each subpackage's __init__ docstring says the same in words).
"""
import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib"
# where Python code may live: the package, its tests, the notebooks that call it
CODE_HOMES = ("lib", "tests", "notebooks")
NOT_SOURCE = {".git", ".venv", "outputs", "__pycache__", ".ipynb_checkpoints"}
# subpackage -> the other subpackages it may import (the protocol core imports none of them)
ALLOWED = {
    "protocol": set(),
    "families": {"protocol"},
    "offline": {"protocol", "families"},
    "scale": {"protocol"},
    "bench": {"protocol", "offline", "families", "scale"},
    "front": {"protocol", "offline", "families", "scale", "bench"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(LIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(LIB.rglob("*.py"))}


def imported(name: str, path: Path) -> set[str]:
    """The lib modules that `name` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{alias.name}" for alias in node.names] + [prefix]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name and MODULES[target].name != "__init__.py":
                found.add(target)
    return found


GRAPH = {name: imported(name, path) for name, path in MODULES.items()}


def find_cycle(graph: dict) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walker_sees_function_level_imports_and_cycles():
    tree = ast.parse("def f():\n    from .run import evaluate\n")
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(tree))
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "lib.protocol.identity" in GRAPH["lib.protocol.run"]


def test_no_import_cycle():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.count(".") >= 2))
def test_dependencies_point_one_way(name):
    own = name.split(".")[1]
    for target in GRAPH[name]:
        other = target.split(".")[1] if target.count(".") >= 1 else None
        if other and other != own:
            assert other in ALLOWED[own], f"{name} imports {target}: {own} must not import {other}"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_every_subpackage_says_what_it_owns(package):
    doc = ast.get_docstring(ast.parse((LIB / package / "__init__.py").read_text()))
    assert doc and len(doc) > 80, f"lib/{package}/__init__.py needs a docstring saying what it owns"


def repo_sources() -> list[Path]:
    """Every .py file of the repository (not the venv, not outputs; links not followed)."""
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if d not in NOT_SOURCE]
        found += [Path(folder) / f for f in files if f.endswith(".py")]
    return found


def test_all_code_is_inside_the_architecture():
    # a script beside lib/ (the GPU bench once was) escapes the import graph above
    outside = [str(p.relative_to(ROOT)) for p in repo_sources() if p.relative_to(ROOT).parts[0] not in CODE_HOMES]
    assert outside == []


def test_no_import_path_manipulation():
    # `lib` is imported as the installed package (or from PYTHONPATH); no file edits the search path
    offenders = [str(p.relative_to(ROOT)) for p in repo_sources()
                 for node in ast.walk(ast.parse(p.read_text()))
                 if isinstance(node, ast.Attribute) and node.attr == "path"
                 and isinstance(node.value, ast.Name) and node.value.id == "sys"]
    assert offenders == []
    assert "lib.bench.gpu" in MODULES and "lib.bench.ways" in GRAPH["lib.bench.gpu"]
