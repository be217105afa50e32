"""MC dropout: any torch model whose dropout stays active at inference.

During export (and in the torch reference) the network runs in "MC mode": training mode for
everything except normalization layers, which keep their running statistics. Every dropout the
forward reaches (``F.dropout*``, which ``nn.Dropout*`` call, under any name, ``torch.dropout``,
``scaled_dot_product_attention``'s ``dropout_p``, ``nn.MultiheadAttention``'s dropout) is
swapped for qbnn's random ops while the graph is traced
(:func:`~qbnn.exporters.modules.dropout.graph_noise`). Dropout stays at the trained rate ``p``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from qbnn.runtimes.contract import Task
from qbnn.runtimes.errors import UnsupportedLayerError

from ..checks.noisecensus import noise_census, shared_noise
from ..modules.btlayers import bayesian_layers
from ..modules.dropout import GraphDropoutNet, mc_mode
from ..modules.layers import SampleContext
from ..modules.wrapper import SampledModel
from ..registry import BuiltModel, SamplingMode, register_exporter
from .reference import loop_sampler

__all__ = ["build_mcdropout", "mc_mode"]

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_UNSUPPORTED = (nn.AlphaDropout, nn.FeatureAlphaDropout)


def _detect(model: object) -> bool:
    """Dropout modules with p > 0, or ``nn.MultiheadAttention`` with attention dropout."""
    if not isinstance(model, nn.Module):
        return False
    return any(
        (isinstance(m, _DROPOUT_TYPES) and m.p > 0)
        or (isinstance(m, nn.MultiheadAttention) and m.dropout > 0)
        for m in model.modules()
    )


def _detect_input(model: object, x: torch.Tensor) -> bool:
    """:func:`_detect`, or a forward that reaches dropout in MC mode however it calls it
    (``F.dropout`` inline or under an import-time name, SDPA's ``dropout_p``)."""
    if _detect(model):
        return True
    return isinstance(model, nn.Module) and any(d.dropout for d in noise_census(model, x))


def _check_noise(model: object, x: torch.Tensor) -> None:
    """Forward runs once over the tiled batch ``[S * B]``: noise that does not follow the batch
    (shaped like a weight) would be one draw shared by all S samples; refused by name."""
    if not isinstance(model, nn.Module):
        return
    shared = shared_noise(noise_census(model, x))
    if shared:
        d = shared[0]
        raise UnsupportedLayerError(
            f"{d.where()} draws noise of shape {list(d.shape)} ({d.op}) that does not follow "
            "the batch (shaped like a weight): posterior 'mcdropout' runs forward once for all "
            "S samples, so every sample would share that draw; use posterior='stochastic' "
            "(one forward per MC sample)"
        )


@register_exporter(
    "mcdropout",
    modes=("dropout",),
    default_mode="dropout",
    detect=_detect,
    description="any torch model with nn.Dropout/Dropout1d/2d/3d, functional dropout "
    "(F.dropout, torch.dropout), scaled_dot_product_attention's dropout_p or "
    "nn.MultiheadAttention's dropout",
    priority=70,
    detect_input=_detect_input,
    check=_check_noise,
    auto_hint="for dropout that forward reaches only in some calls, pass posterior='mcdropout'",
)
def build_mcdropout(
    model: nn.Module, mode: SamplingMode, *, task: Task, seed: int | None
) -> BuiltModel:
    """MC-dropout model -> export module with dropout masks drawn in-graph per MC sample."""
    for name, mod in model.named_modules():
        if isinstance(mod, _UNSUPPORTED):
            raise UnsupportedLayerError(
                f"layer '{name}' of type {type(mod).__name__} is not supported by the "
                f"'mcdropout' exporter; supported: Dropout, Dropout1d, Dropout2d, Dropout3d"
            )
    for name, mod in bayesian_layers(model):
        raise UnsupportedLayerError(
            f"layer '{name}' of type {type(mod).__name__} is a Bayesian-Torch layer; export it "
            "with posterior 'meanfield' or 'flipout'"
        )
    net = mc_mode(copy.deepcopy(model))
    ref = mc_mode(copy.deepcopy(model))
    return BuiltModel(
        module=SampledModel(GraphDropoutNet(net), SampleContext(), task),
        reference=loop_sampler(ref),
    )
