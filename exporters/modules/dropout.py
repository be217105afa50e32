"""Dropout as traced graph ops: MC mode and the random-op swap used while tracing.

``mc_mode`` keeps dropout active (train mode) but normalization layers in eval mode.
:func:`graph_noise` makes every dropout a forward reaches draw qbnn's uniform keep-masks
(:func:`~qbnn.exporters.modules.noise.keep_mask_like`, ``RandomUniformLike`` in the graph), so
tracing records portable, seeded random ops:

* ``F.dropout`` / ``F.dropout1d/2d/3d`` (``nn.Dropout*`` call these), ``torch.dropout`` and
  ``torch.feature_dropout``, however the user's module reached them: through ``F``, or through a
  name bound at import time (``from torch.nn.functional import dropout as drop``), which a
  patch of ``F``'s attributes alone would miss; a ``TorchFunctionMode`` sees the call itself;
* ``F.scaled_dot_product_attention(..., dropout_p > 0)``, decomposed
  (:func:`~qbnn.exporters.modules.attention.sdpa_decomposed`); with ``dropout_p == 0`` torch's
  own op stays;
* ``nn.MultiheadAttention``'s dropout (``F.multi_head_attention_forward`` calls ``dropout`` or
  ``scaled_dot_product_attention`` from ``F``'s module globals, which are swapped too).

:data:`DROPOUT_CALLS` names the functions this swap covers (the noise census marks their draws
as dropout).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .attention import sdpa_decomposed
from .noise import keep_mask_like

__all__ = ["DROPOUT_CALLS", "GraphDropoutNet", "graph_noise", "mc_mode", "swap_random_calls"]


def mc_mode(model: nn.Module) -> nn.Module:
    """Put ``model`` in MC-dropout mode in place: train mode except normalization layers."""
    model.train()
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
            mod.eval()
    return model


def _dropout(input, p=0.5, training=True, inplace=False):
    if not training or p == 0.0:
        return input
    return input * keep_mask_like(input, p)


def _dropout_channels(input, p=0.5, training=True, inplace=False):
    if not training or p == 0.0:
        return input
    idx = (slice(None), slice(None)) + (slice(0, 1),) * (input.dim() - 2)
    return input * keep_mask_like(input[idx], p)


def _torch_dropout(input, p, train):
    return _dropout(input, p, train)


def _torch_feature_dropout(input, p, train):
    return _dropout_channels(input, p, train)


_SDPA = F.scaled_dot_product_attention


def _sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
    if dropout_p == 0.0:  # deterministic: torch's own fused op
        return _SDPA(query, key, value, attn_mask, 0.0, is_causal, scale=scale, **kw)
    return sdpa_decomposed(query, key, value, attn_mask, dropout_p, is_causal, scale, **kw)


#: ``F``'s attributes swapped while tracing, with their replacements
_F_SWAPS: dict[str, Callable] = {
    "dropout": _dropout,
    "dropout1d": _dropout_channels,
    "dropout2d": _dropout_channels,
    "dropout3d": _dropout_channels,
    "scaled_dot_product_attention": _sdpa,
}
#: the original random functions (as torch defines them) -> (public name, replacement)
DROPOUT_CALLS: dict[Callable, tuple[str, Callable]] = {
    **{getattr(F, n): (f"F.{n}", fn) for n, fn in _F_SWAPS.items()},
    torch.dropout: ("torch.dropout", _torch_dropout),
    torch.feature_dropout: ("torch.feature_dropout", _torch_feature_dropout),
}


class _Swap(TorchFunctionMode):
    """Routes calls of the original functions in :data:`DROPOUT_CALLS` (by whatever name the
    caller bound them) to ``route(original, *args, **kwargs)``."""

    def __init__(self, route: Callable) -> None:
        super().__init__()
        self.route = route

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in DROPOUT_CALLS:
            return self.route(func, *args, **kwargs)
        return func(*args, **kwargs)


def _is_call(value: object) -> bool:
    try:
        return value in DROPOUT_CALLS
    except TypeError:  # unhashable
        return False


def _user_namespaces(net: nn.Module | None) -> list[dict]:
    """The module globals of the user's classes' ``forward`` (where ``from
    torch.nn.functional import dropout as drop`` binds ``drop``), torch's own excluded."""
    if net is None:
        return []
    seen: dict[int, dict] = {}
    for mod in net.modules():
        glb = getattr(type(mod).forward, "__globals__", None)
        if isinstance(glb, dict) and not str(glb.get("__name__", "")).startswith("torch"):
            seen.setdefault(id(glb), glb)
    return list(seen.values())


@contextlib.contextmanager
def swap_random_calls(
    route: Callable, net: nn.Module | None = None, mode_route: Callable | None = None
) -> Iterator[None]:
    """While active, every call of a function in :data:`DROPOUT_CALLS` runs
    ``route(original, *args, **kwargs)``: through ``F``'s attributes and module globals (which
    ``nn.Dropout`` and ``F.multi_head_attention_forward`` use), through names bound at import
    time in the modules that define ``net``'s classes (rebound while active), and through any
    other name by a ``TorchFunctionMode``, which calls ``mode_route`` (default ``route``)
    instead. Everything is restored on exit."""
    swaps = [(vars(F), n, getattr(F, n)) for n in _F_SWAPS]
    for glb in _user_namespaces(net):
        swaps.extend((glb, n, v) for n, v in list(glb.items()) if _is_call(v))

    def bound(original):
        return lambda *a, **k: route(original, *a, **k)

    for ns, name, original in swaps:
        ns[name] = bound(original)
    try:
        with _Swap(mode_route or route):
            yield
    finally:
        for ns, name, original in reversed(swaps):
            ns[name] = original


def _to_graph_noise(original: Callable, *args, **kwargs):
    return DROPOUT_CALLS[original][1](*args, **kwargs)


def graph_noise(net: nn.Module | None = None) -> contextlib.AbstractContextManager[None]:
    """While active, dropout (and SDPA's dropout) draws qbnn's keep-masks (module docstring);
    ``net``: the user's network, whose modules' import-time names are rebound too.

    Enter it *outside* a ``scan`` (torch's higher-order ops refuse a mode pushed inside their
    body). Inside a ``scan`` body, torch cannot trace an SDPA call that reaches the mode (SDPA
    called through a name other than ``F``'s attribute or a module global): the ``stochastic``
    family refuses those up front (the noise census marks them ``hidden``)."""
    return swap_random_calls(_to_graph_noise, net)


class GraphDropoutNet(nn.Module):
    """``net`` run under :func:`graph_noise`, so tracing records graph random ops."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        with graph_noise(self.net):
            return self.net(x)
