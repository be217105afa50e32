"""The layout of ``qbnn.pipeline``: one sub-package per stage, each naming its public API; no
import cycles; stages use each other only through those public APIs; every package ships."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

from layout_rules import import_cycles, imports, modules, public_api_problems

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "pipeline"
SUBPACKAGES = sorted(p.parent.name for p in PIPELINE.glob("*/__init__.py"))
TOP = {
    "pipeline": "qbnn.pipeline",
    "exporters": "qbnn.exporters",
    "runtimes": "qbnn.runtimes",
    "serve": "qbnn.serve",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([TOP[parts[0]], *parts[1:]])


def _modules() -> dict[str, Path]:
    return modules(PIPELINE, "qbnn.pipeline")


def test_every_package_is_listed_in_pyproject():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {_module_name(p) for top in TOP for p in (ROOT / top).rglob("__init__.py")}
    assert on_disk - listed == set(), "add these packages to [tool.setuptools] packages"


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_subpackage_names_its_public_api(sub):
    assert public_api_problems(f"qbnn.pipeline.{sub}") == []


def test_no_import_cycles():
    assert import_cycles(PIPELINE, "qbnn.pipeline") == []


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["qbnn", "pipeline"] else None


def test_stages_use_each_other_only_through_their_public_api():
    bad = []
    for name, path in _modules().items():
        for target, names, _ in imports(name, path):
            own, other = _stage(name), _stage(target)
            if other is None or other == own:
                continue
            public = importlib.import_module(f"qbnn.pipeline.{other}").__all__
            if target != f"qbnn.pipeline.{other}" or set(names) - set(public):
                bad.append(f"{name} imports {target}: {names}")
    assert bad == [], "import the stage's package (names in its __all__) instead"
