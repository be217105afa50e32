"""Half-precision models: the graph is float32, so a float16 / bfloat16 / float64 model is
exported from a float32 copy, and the export says so.

The contract's input and outputs are float32 (DESIGN.md section 2). A model kept in
``.half()`` or ``.to(torch.bfloat16)`` after mixed-precision training would otherwise fail in
its first layer ("mat1 and mat2 must have the same dtype") when traced with the float32 example
input. :func:`float32_model` returns a converted deep copy (the user's module keeps its dtype)
and a one-line notice.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from qbnn.runtimes.errors import ConfigError

__all__ = ["float32_model", "non_float32_dtypes"]


def non_float32_dtypes(net: nn.Module) -> list[torch.dtype]:
    """The floating dtypes other than float32 among ``net``'s parameters and buffers, sorted by
    name (``[]`` for a float32 model)."""
    found = {
        t.dtype
        for t in (*net.parameters(), *net.buffers())
        if t.is_floating_point() and t.dtype != torch.float32
    }
    return sorted(found, key=str)


def _names(dtypes: list[torch.dtype]) -> str:
    return " and ".join(str(d).removeprefix("torch.") for d in dtypes)


def float32_model(model: object, network: nn.Module | None) -> tuple[object, str | None]:
    """``(model, None)`` when every floating tensor of the model is float32; else a float32
    deep copy of a module (or of each module of a list) and the notice to give. ``network``: the
    torch network of a posterior object (:func:`~.outputform.network_of`). Raises
    :class:`ConfigError` naming the dtype for a posterior object that cannot be copied (a fitted
    Laplace or SWAG object holds its own tensors)."""
    members = model if isinstance(model, (list, tuple)) else [model]
    if all(isinstance(m, nn.Module) for m in members) and members:
        dtypes = sorted({d for m in members for d in non_float32_dtypes(m)}, key=str)
        if not dtypes:
            return model, None
        copies = [copy.deepcopy(m).float() for m in members]
        out = copies if isinstance(model, (list, tuple)) else copies[0]
        return out, (
            f"the model's parameters are {_names(dtypes)}; exported a float32 copy (qbnn graphs "
            "compute in float32; the model itself is unchanged)"
        )
    dtypes = non_float32_dtypes(network) if network is not None else []
    if dtypes:
        raise ConfigError(
            f"the posterior's network has {_names(dtypes)} parameters; qbnn graphs compute in "
            "float32: fit or load the posterior on a float32 model (model.float())"
        )
    return model, None
