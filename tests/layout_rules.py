"""Import-graph helpers shared by the layout tests (``tests/pipeline/test_layout.py``,
``tests/exporters/test_exporters_layout.py``): the modules under a source folder, each module's
imports as absolute names, and the import cycles between them."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

__all__ = ["import_cycles", "imports", "modules", "public_api_problems"]


def modules(root: Path, package: str) -> dict[str, Path]:
    """``{dotted module name: path}`` of every ``.py`` under ``root`` (the package ``package``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join([package, *parts])] = path
    return out


def imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """Every import of a module (also inside functions) as (absolute module, names, line)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
    return out


def import_cycles(root: Path, package: str) -> list[str]:
    """Import cycles between the modules under ``root`` (each as ``a -> b -> a``)."""
    found = modules(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        deps = set()
        for target, names, _ in imports(name, path):
            subs = {f"{target}.{n}" for n in names if f"{target}.{n}" in found}
            deps |= subs
            if target in found and len(subs) < max(len(names), 1):  # names from its body
                deps.add(target)
        graph[name] = deps - {name}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def public_api_problems(package: str) -> list[str]:
    """What is missing from ``package``'s public API: a docstring, a non-empty ``__all__``, and
    every name ``__all__`` lists."""
    mod = importlib.import_module(package)
    problems = [] if mod.__doc__ else [f"{package} has no docstring"]
    if not getattr(mod, "__all__", None):
        return [*problems, f"{package}.__all__ is empty"]
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    return problems + [f"{package}.__all__ names missing {name!r}" for name in missing]
