"""The layout of ``qbnn.exporters`` (issue 20): rooms ``families/``, ``modules/``, ``passes/``,
``checks/`` around a thin driver, held by four rules checked over the source tree:

1. no import cycles between its modules;
2. no module imports a private name (``_x``) from a module of another room;
3. ``register_exporter`` is used only under ``families/`` (and defined in ``registry.py``);
4. a family's name is written as a code literal only in ``families/`` (docstrings and messages
   may mention it; ``family == "laplace"`` may not), in ``exporters/`` and in the stages that
   used to spell families out (``pipeline/cli``, ``pipeline/compress``, ``pipeline/run``).

Each rule is a checker over a directory; every checker is run on the real tree (no violation)
and on a small planted tree in ``tmp_path`` holding exactly one violation of its rule (it must
report it), so a checker that cannot fail fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from layout_rules import import_cycles, imports, modules, public_api_problems

ROOT = Path(__file__).resolve().parents[2]
EXPORTERS = ROOT / "exporters"
ROOMS = ("families", "modules", "passes", "checks")


def _room(module: str, package: str) -> str:
    rest = module[len(package) + 1 :].split(".") if module != package else [""]
    return rest[0] if rest[0] in ROOMS else f"top:{rest[0]}"


def cross_room_private_imports(root: Path, package: str) -> list[str]:
    """Imports of a private name (``_x``, not dunder) from a module of another room."""
    bad = []
    for name, path in modules(root, package).items():
        for target, names, line in imports(name, path):
            if not target.startswith(package) or _room(target, package) == _room(name, package):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                bad.append(f"{name}:{line} imports {private} from {target}")
    return bad


def registrations_outside_families(root: Path, package: str) -> list[str]:
    """Modules outside ``families/`` that name ``register_exporter`` (``registry.py``, which
    defines it, and the package ``__init__``, which exports it, excepted)."""
    allowed = {f"{package}.registry", package}
    bad = []
    for name, path in modules(root, package).items():
        if _room(name, package) == "families" or name in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            used = (isinstance(node, ast.Name) and node.id == "register_exporter") or (
                isinstance(node, ast.alias) and node.name == "register_exporter"
            )
            if used or (isinstance(node, ast.Attribute) and node.attr == "register_exporter"):
                bad.append(f"{name}:{getattr(node, 'lineno', '?')}")
    return bad


def family_names(root: Path) -> set[str]:
    """Families as ``families/*.py`` register them: ``@register_exporter("name", ...)``."""
    names = set()
    for path in (root / "families").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "register_exporter":
                names.add(ast.literal_eval(node.args[0]))
    return names


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            ids.add(id(first.value))
    return ids


def family_literals(roots: list[tuple[Path, str]], families: set[str]) -> list[str]:
    """Code literals equal to a family name outside ``families/`` (docstrings excepted)."""
    bad = []
    for root, package in roots:
        for name, path in modules(root, package).items():
            if _room(name, package) == "families":
                continue
            tree = ast.parse(path.read_text())
            docs = _docstrings(tree)
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and node.value in families
                    and id(node) not in docs
                ):
                    bad.append(f"{name}:{node.lineno} {node.value!r}")
    return bad


# --------------------------------------------------------------------------- the real tree


def test_exporters_have_no_import_cycles():
    assert import_cycles(EXPORTERS, "qbnn.exporters") == []


def test_no_private_import_across_rooms():
    assert cross_room_private_imports(EXPORTERS, "qbnn.exporters") == []


def test_register_exporter_only_under_families():
    assert registrations_outside_families(EXPORTERS, "qbnn.exporters") == []


def test_family_names_are_written_only_in_their_modules():
    from qbnn.exporters import known_families

    families = family_names(EXPORTERS)
    assert families == set(known_families())  # the static reading sees every family
    roots = [(EXPORTERS, "qbnn.exporters")] + [
        (ROOT / "pipeline" / stage, f"qbnn.pipeline.{stage}")
        for stage in ("cli", "compress", "run")
    ]
    assert family_literals(roots, families) == []


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_names_its_public_api(room):
    assert public_api_problems(f"qbnn.exporters.{room}") == []


# --------------------------------------------------------------------------- planted violations


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for room in ROOMS:
        (root / room).mkdir(exist_ok=True)
        (root / room / "__init__.py").touch()
    return root


CLEAN = {
    "registry.py": "def register_exporter(name, **spec):\n    return lambda f: f\n",
    "modules/m.py": "def helper():\n    return 1\n\n\ndef _private():\n    return 2\n",
    "families/toy.py": (
        '"""The toy family."""\n'
        "from ..modules.m import helper\n"
        "from ..registry import register_exporter\n\n\n"
        '@register_exporter("toy", modes=("x",))\n'
        "def build(model):\n"
        "    return helper()\n"
    ),
    "steps.py": '"""Mentions toy in prose only."""\n\n\ndef run(family):\n    return family\n',
}


def _check_all(root: Path) -> dict[str, list[str]]:
    return {
        "cycles": import_cycles(root, "pkg"),
        "private": cross_room_private_imports(root, "pkg"),
        "register": registrations_outside_families(root, "pkg"),
        "literals": family_literals([(root, "pkg")], family_names(root)),
    }


def test_a_clean_planted_tree_passes_every_rule(tmp_path):
    assert _check_all(_tree(tmp_path, CLEAN)) == {
        "cycles": [],
        "private": [],
        "register": [],
        "literals": [],
    }


PLANTED = {
    "cycles": {
        "modules/a.py": "from .b import g\n\n\ndef f():\n    return g\n",
        "modules/b.py": "from .a import f\n\n\ndef g():\n    return f\n",
    },
    "private": {"checks/c.py": "from ..modules.m import _private\n"},
    "register": {"modules/r.py": "from ..registry import register_exporter\n"},
    "literals": {"steps.py": 'def run(family):\n    return family == "toy"\n'},
}


@pytest.mark.parametrize("rule", sorted(PLANTED))
def test_each_rule_fails_on_a_planted_violation(tmp_path, rule):
    found = _check_all(_tree(tmp_path, {**CLEAN, **PLANTED[rule]}))
    assert len(found[rule]) == 1, found
    assert all(v == [] for k, v in found.items() if k != rule), found
