"""Third-party trainer libraries the tests import without their top-level packages."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from types import ModuleType

import pytest

__all__ = ["torch_uncertainty"]


def torch_uncertainty(module: str) -> ModuleType:
    """``torch_uncertainty.<module>`` (e.g. ``"layers.bayesian"``) imported without running
    ``torch_uncertainty/__init__.py`` or ``torch_uncertainty/models/__init__.py``, which import
    lightning and torchvision (neither installed): both packages are registered as skeletons.
    Fails with the install hint when torch-uncertainty is missing (CI installs it)."""
    if importlib.util.find_spec("torch_uncertainty") is None:
        pytest.fail(
            "torch-uncertainty is missing: pip install --no-deps -r requirements/no-deps.txt"
        )
    for name in ("torch_uncertainty", "torch_uncertainty.models"):
        if name not in sys.modules:
            spec = importlib.util.find_spec(name)
            pkg = types.ModuleType(name)
            pkg.__path__ = list(spec.submodule_search_locations)
            pkg.__spec__ = spec
            sys.modules[name] = pkg
    return importlib.import_module(f"torch_uncertainty.{module}")
