"""Optional libraries a stage may need, each with the exact command that installs it.

torch and the trainer libraries are not dependencies of the ``qbnn`` distribution (their
metadata would pull a CUDA torch, see README "Set-up"), so a plain ``pip install qbnn`` can lack
them. :func:`require` checks for them before a stage writes anything; :func:`install_hint`
turns a ``ModuleNotFoundError`` into the command to run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from qbnn.runtimes.errors import QbnnError

__all__ = ["INSTALL", "MissingDependencyError", "install_hint", "missing_module", "require"]

_LAPLACE = (
    "pip install --no-deps laplace-torch==0.3 backpack-for-pytorch==1.7.1 "
    "curvlinops-for-pytorch==3.0.1 && pip install 'qbnn[laplace]'"
)
_LAPLACE_DEPS = "pip install 'qbnn[laplace]'"
_SERVE = "pip install 'qbnn[serve]'"

#: top-level module -> (what it is, the command that installs it)
INSTALL: dict[str, tuple[str, str]] = {
    "torch": ("PyTorch", "pip install torch==2.13.0"),
    "bayesian_torch": ("Bayesian-Torch", "pip install --no-deps bayesian-torch==0.5.0"),
    "laplace": ("laplace-torch", _LAPLACE),
    "backpack": ("backpack-for-pytorch (a laplace-torch backend)", _LAPLACE),
    "curvlinops": ("curvlinops-for-pytorch (a laplace-torch backend)", _LAPLACE),
    "asdl": ("ASDL (a laplace-torch dependency)", _LAPLACE_DEPS),
    "opt_einsum": ("opt-einsum (a laplace-torch dependency)", _LAPLACE_DEPS),
    "torchmetrics": ("torchmetrics (a laplace-torch dependency)", _LAPLACE_DEPS),
    "einops": ("einops (a laplace-torch dependency)", _LAPLACE_DEPS),
    "unfoldNd": ("unfoldNd (a laplace-torch dependency)", _LAPLACE_DEPS),
    "einconv": ("einconv (a laplace-torch dependency)", _LAPLACE_DEPS),
    "linear_operator": ("linear-operator (a laplace-torch dependency)", _LAPLACE_DEPS),
    "fastapi": ("FastAPI (qbnn serve)", _SERVE),
    "uvicorn": ("uvicorn (qbnn serve)", _SERVE),
    "prometheus_client": ("prometheus-client (qbnn serve)", _SERVE),
    "ray": ("Ray (qbnn serve --ray, qbnn score)", _SERVE),
    "pyarrow": ("pyarrow (qbnn score)", _SERVE),
}


class MissingDependencyError(QbnnError):
    """An optional library that a stage needs is not installed (the message says how to)."""


def install_hint(module: str | None) -> str | None:
    """``"<what> (module 'x') is not installed; install it with: <command>"`` for a module of
    :data:`INSTALL` (or one of its submodules), else ``None``."""
    top = (module or "").partition(".")[0]
    if top not in INSTALL:
        return None
    what, command = INSTALL[top]
    return f"{what} (module '{top}') is not installed; install it with: {command}"


def missing_module(exc: BaseException) -> str | None:
    """The name of the module whose absence caused ``exc`` (or its cause chain), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name
        exc = exc.__cause__ or exc.__context__
    return None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(modules: Iterable[str], purpose: str) -> None:
    """Raise :class:`MissingDependencyError` (one line, with the install command) for the
    first of ``modules`` that is not installed; ``purpose`` says what needs it."""
    for module in modules:
        if not _installed(module):
            hint = install_hint(module) or f"module '{module}' is not installed"
            raise MissingDependencyError(f"{purpose} needs {hint}")
