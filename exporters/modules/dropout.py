"""Dropout as traced graph ops: MC mode and the functional-dropout swap used while tracing.

``mc_mode`` keeps dropout active (train mode) but normalization layers in eval mode;
:class:`GraphDropoutNet` swaps the functional dropout family for versions built on
:func:`~qbnn.exporters.modules.noise.keep_mask_like`, so dropout written inline in ``forward``
becomes a graph random op too.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .noise import keep_mask_like

__all__ = ["GraphDropoutNet", "mc_mode"]


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


@contextlib.contextmanager
def _graph_dropout():
    """``F.dropout`` / ``F.dropout1d/2d/3d`` swapped for keep-mask versions, restored on exit."""
    saved = {n: getattr(F, n) for n in ("dropout", "dropout1d", "dropout2d", "dropout3d")}
    F.dropout = _dropout
    F.dropout1d = F.dropout2d = F.dropout3d = _dropout_channels
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(F, name, fn)


class GraphDropoutNet(nn.Module):
    """``net`` whose functional dropout (``F.dropout*``, which ``nn.Dropout*`` call) draws
    qbnn's uniform keep-masks while it runs, so tracing records graph random ops."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        with _graph_dropout():
            return self.net(x)
