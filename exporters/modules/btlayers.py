"""Reading the posterior out of Bayesian-Torch layers, and swapping layers in a module tree."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from qbnn.runtimes.errors import UnsupportedLayerError

from .layers import GaussianLayer
from .ops import ConvSpec

__all__ = [
    "REPARAM_TYPES",
    "FLIPOUT_TYPES",
    "bayesian_layers",
    "gaussian_posterior",
    "replace_modules",
]

#: Bayesian-Torch class names supported per family (exact types; subclasses such as the
#: ``Quantized*`` variants change the forward and are rejected).
REPARAM_TYPES = ("LinearReparameterization", "Conv1dReparameterization", "Conv2dReparameterization")
FLIPOUT_TYPES = ("LinearFlipout", "Conv1dFlipout", "Conv2dFlipout")


def _base_class() -> type | None:
    try:
        from bayesian_torch.layers.base_variational_layer import BaseVariationalLayer_
    except ImportError:  # pragma: no cover - bayesian-torch is a declared dependency
        return None
    return BaseVariationalLayer_


def _is_bt(module: nn.Module) -> bool:
    return type(module).__module__.startswith("bayesian_torch.layers")


def bayesian_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every Bayesian-Torch variational layer in ``model`` as ``(qualified_name, module)``."""
    base = _base_class()
    if base is None:
        return
    for name, mod in model.named_modules():
        if isinstance(mod, base):
            yield name, mod


def check_supported(model: nn.Module, supported: tuple[str, ...], family: str) -> None:
    """Raise :class:`UnsupportedLayerError` naming the first layer outside ``supported``."""
    for name, mod in bayesian_layers(model):
        kind = type(mod).__name__
        if kind not in supported or not _is_bt(mod):
            raise UnsupportedLayerError(
                f"layer '{name}' of type {kind} is not supported by the '{family}' exporter; "
                f"supported layer types: {', '.join(supported)}"
            )


def gaussian_posterior(mod: nn.Module) -> GaussianLayer:
    """The mean-field posterior of a supported Bayesian-Torch layer.

    ``sigma = softplus(rho) = log1p(exp(rho))``, as Bayesian-Torch computes it.
    """
    with torch.no_grad():
        if hasattr(mod, "mu_weight"):
            mu_w, rho_w, conv = mod.mu_weight, mod.rho_weight, None
        else:
            mu_w, rho_w, conv = mod.mu_kernel, mod.rho_kernel, _conv_spec(mod)
        mu_b = getattr(mod, "mu_bias", None)
        rho_b = getattr(mod, "rho_bias", None)
        return GaussianLayer(
            mu_w=mu_w.detach().clone(),
            sigma_w=F.softplus(rho_w.detach()),
            mu_b=None if mu_b is None else mu_b.detach().clone(),
            sigma_b=None if rho_b is None else F.softplus(rho_b.detach()),
            conv=conv,
            returns_kl=not getattr(mod, "dnn_to_bnn_flag", False),
        )


def _tuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _conv_spec(mod: nn.Module) -> ConvSpec:
    ndim = 1 if "Conv1d" in type(mod).__name__ else 2
    if isinstance(mod.padding, str):
        raise UnsupportedLayerError(
            f"{type(mod).__name__} with padding='{mod.padding}' is not supported; "
            "use integer padding"
        )
    return ConvSpec(
        ndim=ndim,
        stride=_tuple(mod.stride, ndim),
        padding=_tuple(mod.padding, ndim),
        dilation=_tuple(mod.dilation, ndim),
        groups=int(mod.groups),
    )


def replace_modules(model: nn.Module, fn: Callable[[str, nn.Module], nn.Module | None]) -> int:
    """Replace every submodule for which ``fn(name, module)`` returns a module; returns count."""
    targets = [(n, m) for n, m in model.named_modules() if n]
    count = 0
    for name, mod in targets:
        new = fn(name, mod)
        if new is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        count += 1
    return count
