"""The SDK's structure (ARCHITECTURE.md, issue 19): no import cycles between its modules,
no class reaching into another object's private members, and other packages reaching the
SDK only through public modules."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import fedhft.sdk

SDK = Path(fedhft.sdk.__file__).parent
REPOSITORY = Path(__file__).resolve().parents[2]
OTHER_USERS = ("cli", "simulation", "benchmarks", "examples")
"""Folders of the repository whose code imports the SDK (besides the tests)."""


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SDK.rglob("*.py"):
        parts = ["fedhft", "sdk", *path.relative_to(SDK).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imported(module: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The SDK modules ``module`` imports anywhere (at module level or in a function)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                name = f"{base}.{alias.name}"
                target = name if name in modules else base
                if target in modules and target != module:
                    yield target
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in modules)


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` (empty when there is none)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done.
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return []


def test_sdk_modules_import_each_other_without_cycles() -> None:
    """No SDK module imports another that imports it back, directly or around a loop."""
    modules = _modules()
    graph = {m: set(_imported(m, p, modules)) for m, p in modules.items()}
    assert _cycle(graph) == []


def _own_private_names(cls: ast.ClassDef) -> set[str]:
    """The private members a class defines: its methods and its ``self._x`` attributes."""
    names = {
        node.name
        for node in cls.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "self":
                names.add(node.attr)
        elif isinstance(node, ast.AnnAssign | ast.Assign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {name for name in names if name.startswith("_")}


def _foreign_private_accesses(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """``x._member`` where ``x`` is not ``self``/``cls`` and no enclosing class defines it."""

    def visit(node: ast.AST, own: set[str]) -> Iterator[tuple[int, str]]:
        if isinstance(node, ast.ClassDef):
            own = own | _own_private_names(node)
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"})
            and node.attr not in own
        ):
            yield node.lineno, ast.unparse(node)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, own)

    yield from visit(tree, set())


def test_no_sdk_class_reaches_into_another_objects_private_members() -> None:
    """Classes share state through context objects, never through another's ``_members``."""
    found = [
        f"{path.relative_to(SDK)}:{line}: {text}"
        for path in sorted(SDK.rglob("*.py"))
        for line, text in _foreign_private_accesses(ast.parse(path.read_text()))
    ]
    assert found == []


def test_other_packages_import_only_public_sdk_modules() -> None:
    """The CLI, the simulation, the benchmarks and the examples use public SDK modules."""
    private = []
    for folder in OTHER_USERS:
        for path in sorted((REPOSITORY / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                private += [
                    f"{path.relative_to(REPOSITORY)}:{node.lineno}: {name}"
                    for name in names
                    if name.startswith("fedhft.sdk")
                    and any(part.startswith("_") for part in name.split("."))
                ]
    assert private == []
