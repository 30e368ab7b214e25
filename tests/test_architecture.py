"""The shape of the house, checked from the source (an import-graph walk over camtool/):

- no import cycle among camtool's modules (every import that runs counts, including those inside
  functions; imports under ``if TYPE_CHECKING:`` are for type checkers only and do not);
- no module imports the package face (``camtool/__init__.py``): ``from camtool import X`` and
  ``import camtool`` are for users, and a module that uses them would run in a half-imported
  package;
- no module imports a private name (``_name``) from another module;
- no module is past 500 lines (a longer file is usually two rooms).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "camtool"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that runs: module level, inside functions and classes, but not
    under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def absolute(node: ast.ImportFrom, module: str) -> str:
    """The module an ``ImportFrom`` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> list[tuple[str, list[str]]]:
    """``(imported module, names taken from it)`` for each runtime import of ``module`` that
    reaches into camtool (``from camtool.a import b`` where ``camtool.a.b`` is a module counts as
    an import of that module)."""
    tree = ast.parse(MODULES[module].read_text())
    edges: list[tuple[str, list[str]]] = []
    for node in runtime_imports(tree):
        if isinstance(node, ast.Import):
            edges += [(a.name, []) for a in node.names if a.name.split(".")[0] == "camtool"]
            continue
        target = absolute(node, module)
        if target.split(".")[0] != "camtool":
            continue
        names = []
        for alias in node.names:
            if f"{target}.{alias.name}" in MODULES:
                edges.append((f"{target}.{alias.name}", []))
            else:
                names.append(alias.name)
        if names:
            edges.append((target, names))
    return edges


GRAPH = {m: imports_of(m) for m in MODULES}


def test_the_walk_sees_the_whole_package() -> None:
    # a guard against a walk that finds nothing and so passes: the package has dozens of modules
    # and the explain path imports through several layers
    assert len(MODULES) > 60
    explaining = {target for target, _ in GRAPH["camtool.explaining"]}
    assert {"camtool.binding", "camtool.explanation"} <= explaining


def test_no_import_cycle() -> None:
    edges = {m: sorted({t for t, _ in GRAPH[m] if t in MODULES and t != m}) for m in MODULES}
    # the package face and subpackage faces re-export lazily: an __init__ that imports its own
    # submodules is not a cycle through them, so a package's edge to its parent package is kept
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in edges[node]:
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for module in MODULES:
        if module not in state:
            visit(module)
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_the_package_face() -> None:
    offenders = [
        f"{module} imports {target}"
        for module in MODULES
        if module != "camtool"
        for target, _ in GRAPH[module]
        if target == "camtool"
    ]
    assert offenders == []


def test_no_module_imports_a_private_name_from_another_module() -> None:
    offenders = [
        f"{module} imports {name} from {target}"
        for module in MODULES
        for target, names in GRAPH[module]
        for name in names
        if name.startswith("_") and not name.startswith("__") and target != module
    ]
    assert offenders == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_past_500_lines(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} has {lines} lines"
