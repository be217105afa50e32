"""Batch-free rewrites of third-party layers that fix the batch size when traced.

Some one-network-ensemble layers split their input into members with Python arithmetic on the
batch size (torch-uncertainty's Masksembles ``Mask1d`` / ``Mask2d``: ``torch.split(x, batch //
num_masks)``).
``torch.export`` turns that arithmetic into a literal, so the graph accepts only the example's
batch size. :func:`batch_free` swaps such layers, in place, for modules that compute the same
thing with ``reshape(M, -1, ...)``; the layers are recognised by their class (module path and
name) without importing their library. The self-check compares the graph with the original
layers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["BatchFreeMask", "batch_free"]


def _per_member(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``v [M, C]`` shaped to broadcast over ``x.reshape(M, -1, C, *spatial)``."""
    return v.reshape(v.shape[0], 1, v.shape[1], *([1] * (x.dim() - 2))).to(x.dtype)


class BatchFreeMask(nn.Module):
    """Masksembles: member ``m``'s rows ``[M * b, C, *spatial]`` times its 0/1 mask ``masks[m]``
    ``[C]``; the same values as ``Mask1d`` / ``Mask2d`` for any b."""

    def __init__(self, masks: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("masks", masks.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.masks.shape[0]
        out = x.reshape(m, -1, *x.shape[1:]) * _per_member(self.masks, x)
        return out.reshape(x.shape)


def _mask(mod: nn.Module) -> nn.Module:
    return BatchFreeMask(mod.masks)


_PREFIX = "torch_uncertainty.layers."
_REWRITES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "Mask1d": _mask,
    "Mask2d": _mask,
}


def batch_free(net: nn.Module) -> list[str]:
    """Swap, in place, every layer of ``net`` known to fix the batch size when traced for its
    batch-free equivalent; returns the swapped layers' names."""
    done = []
    for name, mod in list(net.named_modules()):
        cls = type(mod)
        rewrite = _REWRITES.get(cls.__name__) if cls.__module__.startswith(_PREFIX) else None
        if rewrite is None or not name:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, rewrite(mod))
        done.append(name)
    return done
