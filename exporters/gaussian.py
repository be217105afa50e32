"""Shared builder for Gaussian weight posteriors (mean-field and flipout layers).

Modes: ``weight`` (per-sample weight draws), ``lrt`` (local reparameterization), ``flipout``,
``frozen:K`` (K exact draws taken at export time, stored like an ensemble).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from qbnn.runtimes.contract import Task

from .btlayers import bayesian_layers, check_supported, gaussian_posterior, replace_modules
from .layers import FixedLayer, FlipoutLayer, LRTLayer, SampleContext, WeightSampledLayer
from .registry import BuiltModel, SamplingMode
from .sampling import export_generator, loop_sampler, member_sampler
from .wrapper import EnsembleModel, SampledModel

__all__ = ["build_gaussian"]


def build_gaussian(
    model: nn.Module,
    mode: SamplingMode,
    *,
    family: str,
    supported: tuple[str, ...],
    task: Task,
    seed: int | None,
) -> BuiltModel:
    """Swap every supported Bayesian-Torch layer of a copy of ``model`` for its export layer."""
    check_supported(model, supported, family)
    if mode.name == "frozen":
        return _build_frozen(model, mode.k or 1, task=task, seed=seed)
    ctx = SampleContext()
    net = copy.deepcopy(model).eval()
    has_conv = False

    def swap(name: str, mod: nn.Module) -> nn.Module | None:
        nonlocal has_conv
        if type(mod).__name__ not in supported:
            return None
        post = gaussian_posterior(mod)
        has_conv = has_conv or post.conv is not None
        if mode.name == "lrt":
            return LRTLayer(post)
        if mode.name == "flipout":
            return FlipoutLayer(post, ctx)
        return WeightSampledLayer(post, ctx)

    replace_modules(net, swap)
    approx = None
    if mode.name == "lrt" and has_conv:
        approx = "lrt on convolutions ignores weight sharing across positions"
    return BuiltModel(
        module=SampledModel(net, ctx, task),
        reference=loop_sampler(copy.deepcopy(model).eval()),
        approximate=approx,
    )


def _snapshot(model: nn.Module, gen: torch.Generator) -> nn.Module:
    net = copy.deepcopy(model).eval()
    layers = dict(bayesian_layers(model))

    def swap(name: str, mod: nn.Module) -> nn.Module | None:
        if name not in layers:
            return None
        post = gaussian_posterior(layers[name])
        w, b = post.sample(gen)
        return FixedLayer(w, b, post.conv, post.returns_kl)

    replace_modules(net, swap)
    return net


def _build_frozen(model: nn.Module, k: int, *, task: Task, seed: int | None) -> BuiltModel:
    gen = export_generator(seed)
    members = [_snapshot(model, gen) for _ in range(k)]
    return BuiltModel(
        module=EnsembleModel(members, task),
        reference=member_sampler(members),
        exact=True,
        notes=[f"{k} posterior draws frozen at export time"],
    )
