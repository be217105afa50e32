"""Shared builder for Gaussian weight posteriors (mean-field and flipout layers).

Modes: ``weight`` (per-sample weight draws), ``lrt`` (local reparameterization), ``flipout``,
``frozen:K`` (K exact draws taken at export time, stored like an ensemble).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from qbnn.runtimes.contract import Task

from ..modules.btlayers import (
    FLIPOUT_TYPES,
    REPARAM_TYPES,
    bayesian_layers,
    check_supported,
    gaussian_posterior,
    replace_modules,
)
from ..modules.layers import FixedLayer, FlipoutLayer, LRTLayer, SampleContext
from ..modules.loopmodel import (
    SOURCE_MOMENTS,
    UNROLL_MAX,
    GaussianSource,
    SampleLoopModel,
    StackedDraws,
)
from ..modules.wrapper import (
    FLIPOUT_MOMENTS,
    LRT_MOMENTS,
    MEMBER_DRAWS,
    EnsembleModel,
    SampledModel,
)
from ..registry import BuiltModel, SamplingMode
from ..tensors import CompressTensors
from .reference import export_generator, loop_sampler

__all__ = ["BAYESIAN_TORCH", "BT_TENSORS", "build_gaussian", "refuse_unsupported_layers"]

#: the trainer distribution of the Bayesian-Torch families (``qbnn.source``)
BAYESIAN_TORCH = "bayesian-torch"
#: how compress reads their graphs: ``frozen:K`` members, ``lrt`` / ``flipout`` moments per
#: layer, ``weight``-mode per-parameter moments
BT_TENSORS = CompressTensors((MEMBER_DRAWS, LRT_MOMENTS, FLIPOUT_MOMENTS, SOURCE_MOMENTS))


def refuse_unsupported_layers(model: object) -> None:
    """Raise :class:`UnsupportedLayerError` naming a Bayesian-Torch layer of ``model`` that no
    family exports (``auto`` found nothing it can export)."""
    if isinstance(model, nn.Module):
        check_supported(model, REPARAM_TYPES + FLIPOUT_TYPES, "auto")


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
    if mode.name == "weight":
        return _build_weight(model, task=task)
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
        return FlipoutLayer(post, ctx)

    replace_modules(net, swap)
    approx = None
    if mode.name == "lrt" and has_conv:
        approx = "lrt on convolutions ignores weight sharing across positions"
    return BuiltModel(
        module=SampledModel(net, ctx, task),
        reference=loop_sampler(copy.deepcopy(model).eval()),
        approximate=approx,
    )


def _placeholders(model: nn.Module) -> tuple[nn.Module, dict[str, object]]:
    """A copy of ``model`` whose Bayesian layers are :class:`FixedLayer` placeholders (holding
    the posterior mean) and the posteriors by layer name."""
    net = copy.deepcopy(model).eval()
    posts = {name: gaussian_posterior(mod) for name, mod in bayesian_layers(model)}

    def swap(name: str, mod: nn.Module) -> nn.Module | None:
        post = posts.get(name)
        if post is None:
            return None
        return FixedLayer(post.mu_w, post.mu_b, post.conv, post.returns_kl)

    replace_modules(net, swap)
    return net, posts


def _build_weight(model: nn.Module, *, task: Task) -> BuiltModel:
    """``weight`` mode: per MC sample one weight draw of every Bayesian layer, then the
    ordinary network inside the sample loop (:mod:`qbnn.exporters.modules.loopmodel`)."""
    net, posts = _placeholders(model)
    posterior = {}
    for name, post in posts.items():
        posterior[f"{name}.weight"] = (post.mu_w, post.sigma_w)
        if post.mu_b is not None:
            posterior[f"{name}.bias"] = (post.mu_b, post.sigma_b)
    return BuiltModel(
        module=SampleLoopModel(net, GaussianSource(posterior), task),
        reference=loop_sampler(copy.deepcopy(model).eval()),
    )


def _build_frozen(model: nn.Module, k: int, *, task: Task, seed: int | None) -> BuiltModel:
    """``frozen:K``: K exact draws taken now. Up to :data:`UNROLL_MAX` draws the graph holds K
    copies of the network with constant weights (fast kernels, static int8); above it the draws
    are stored stacked ``[K, *shape]`` per parameter and run in the sample loop (graph size and
    export time independent of K)."""
    gen = export_generator(seed)
    net, posts = _placeholders(model)
    draws: dict[str, list[torch.Tensor]] = {}
    for _ in range(k):
        for name, post in posts.items():
            w, b = post.sample(gen)
            draws.setdefault(f"{name}.weight", []).append(w)
            if b is not None:
                draws.setdefault(f"{name}.bias", []).append(b)
    source = StackedDraws({name: torch.stack(ws) for name, ws in draws.items()})
    members = []
    for state in source.member_states():
        member = copy.deepcopy(net)
        member.load_state_dict(state, strict=False)
        members.append(member)
    notes = [f"{k} posterior draws frozen at export time"]
    ref = _user_at_draws(model, source.member_states())
    if k <= UNROLL_MAX:
        module: nn.Module = EnsembleModel(members, task)
    else:
        notes.append(f"K > {UNROLL_MAX}: draws stored stacked and run in the sample loop")
        module = SampleLoopModel(net, source, task)
    return BuiltModel(module, ref, True, notes=notes, members=members)


def _user_at_draws(model: nn.Module, states: list[dict[str, torch.Tensor]]):
    """The self-check's reference for frozen draws: the user's own Bayesian-Torch model with
    each layer's posterior collapsed onto draw ``s mod K`` (``mu`` = the draw, ``rho`` = -200,
    so ``sigma = softplus(rho)`` underflows to 0 and the layer's own forward is deterministic),
    not qbnn's placeholder network. ``states``: ``{"<layer>.weight" | "<layer>.bias": [*shape]}``.
    Returns ``sample(x [B, *F], S, gen) -> [S, B, C]``."""
    net = copy.deepcopy(model).eval()
    layers = dict(bayesian_layers(net))

    def load(state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            name, _, kind = key.rpartition(".")
            mod = layers[name]
            if kind == "bias":
                mu, rho = mod.mu_bias, mod.rho_bias
            else:
                w = "weight" if hasattr(mod, "mu_weight") else "kernel"
                mu, rho = getattr(mod, f"mu_{w}"), getattr(mod, f"rho_{w}")
            mu.copy_(value)
            rho.fill_(-200.0)

    def sample(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
        del gen
        outs = []
        with torch.no_grad():
            for state in states:
                load(state)
                out = net(x)
                outs.append((out[0] if isinstance(out, (tuple, list)) else out).reshape(len(x), -1))
        return torch.stack([outs[i % len(outs)] for i in range(s)])

    return sample
