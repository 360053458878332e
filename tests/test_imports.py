"""The import graph of cmamil has no cycles: every import of a cmamil module, at module or function level."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder → the import name it is installed under (setup.cfg's package_dir)
SOURCES = {"cmamil": "cmamil", "extract": "cmamil.extract", "plugins": "cmamil.plugins"}


def module_files(root: Path, sources: dict[str, str]) -> dict[str, Path]:
    """Every Python file under the source folders, keyed by its dotted module name."""
    modules = {}
    for folder, package in sources.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((package, *parts))] = path
    return modules


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Import statements anywhere in the tree (functions included) except under `if TYPE_CHECKING:`."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        children = node.orelse if _type_checking_only(node) else ast.iter_child_nodes(node)
        stack.extend(children)
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the modules among `modules` it imports; `from pkg import name` points at pkg.name when that
    is a module, relative imports are resolved against the importing module's package."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                child = f"{source}.{alias.name}"
                targets.add(child if child in modules else source)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan), each one import cycle or more."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while not component or member != node:
                member = stack.pop()
                component.add(member)
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(component: frozenset[str], graph: dict[str, set[str]]) -> str:
    """One cycle through the component, written 'a -> b -> a'."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        step = min(t for t in graph[path[-1]] if t in component)
        if step in seen:
            return " -> ".join(path[path.index(step):] + [step])
        path.append(step)
        seen.add(step)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(module_files(ROOT, SOURCES))


def test_graph_sees_every_kind_of_import(graph):
    assert "cmamil.registry" in graph["cmamil.models"]  # from cmamil import registry: a submodule
    assert "cmamil.plugins._attention" in graph["cmamil.plugins.abmil"]
    assert "cmamil.store" in graph["cmamil.extract.features"]
    assert "cmamil.plugin_check" in graph["cmamil.cli.plugins"]  # imported inside a function


def test_no_import_cycles(graph):
    found = [describe(c, graph) for c in cycles(graph)]
    assert not found, "import cycles: " + "; ".join(found)


def test_cycles_through_relative_and_function_level_imports_are_found(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n")
    graph = import_graph(module_files(tmp_path, {"pkg": "pkg"}))
    assert cycles(graph) == [frozenset({"pkg.a", "pkg.sub.b", "pkg.c"})]
    assert describe(cycles(graph)[0], graph) == "pkg.a -> pkg.sub.b -> pkg.c -> pkg.a"
    assert graph["pkg.d"] == set()
