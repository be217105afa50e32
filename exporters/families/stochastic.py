"""The ``stochastic`` family: any torch module whose forward draws its own noise.

Hand-written Bayes-by-backprop layers (``w = mu + softplus(rho) * torch.randn_like(mu)``),
noise injection, third-party Bayesian layers whose sampling is tensor code: the forward runs once
per MC sample inside the sample loop (:mod:`qbnn.exporters.modules.loopmodel`), and the user's
random ops become qbnn's seeded noise (:mod:`qbnn.exporters.passes.randomops`). ``auto`` picks
it when :func:`~qbnn.exporters.checks.noisecensus.draws_own_noise` finds non-dropout draws.
A forward with side effects (torch-uncertainty's ``BayesLinear`` writes ``self.log_prior``,
blitz's ``BayesianLinear`` fills a buffer in place with ``normal_()``:
:func:`~qbnn.exporters.checks.sideeffects.side_effects`) is traced beforehand with them
neutralised (:func:`~qbnn.exporters.modules.pureforward.pure_forward`); the self-check still
compares the graph with the model's own forward.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from qbnn.runtimes.contract import Task
from qbnn.runtimes.errors import UnsupportedLayerError

from ..checks.noisecensus import draws_own_noise, noise_census
from ..checks.sideeffects import side_effects
from ..modules.btlayers import bayesian_layers
from ..modules.dropout import GraphDropoutNet, graph_noise, mc_mode
from ..modules.loopmodel import ParamSource, SampleLoopModel
from ..modules.pureforward import pure_forward
from ..registry import BuiltModel, SamplingMode, register_exporter
from .reference import loop_sampler

__all__ = ["build_stochastic"]


class _Repeat(ParamSource):
    """No per-sample parameters: the Scan walks a column of ones ``[S, 1]`` so the body runs S
    times; the body multiplies the output by its slice (OpenVINO's ONNX frontend drops a Scan
    input the body never reads and then runs the body once)."""

    def forward(self, template: torch.Tensor) -> list[torch.Tensor]:
        return [template.reshape(-1, 1) * 0.0 + 1.0]

    def unpack(self, per_sample: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"unit": per_sample[0]}


class _Unit(nn.Module):
    """``net(x) * unit``; ``unit = [1.0]`` is the Scan's per-sample slice (:class:`_Repeat`)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("unit", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out * self.unit


def _check_noise(model: object, x: torch.Tensor) -> None:
    """SDPA dropout called through a name qbnn cannot rebind (torch cannot trace its swap
    inside the sample loop) is refused by name. (In-place draws into module state are traced
    functionally: :mod:`~qbnn.exporters.modules.pureforward`.)"""
    if not isinstance(model, nn.Module):
        return
    for d in noise_census(model, x):
        if d.hidden and d.call == "F.scaled_dot_product_attention":
            raise UnsupportedLayerError(
                f"{d.where()} calls {d.call} with dropout_p > 0 through a name qbnn cannot "
                "rebind (an attribute or a local, not F.scaled_dot_product_attention or a "
                "module-level import); inside the sample loop of posterior 'stochastic' torch "
                "cannot trace its swap to qbnn's seeded noise: call "
                "F.scaled_dot_product_attention(...) or a module-level import in forward"
            )


@register_exporter(
    "stochastic",
    modes=("loop",),
    default_mode="loop",
    detect=lambda model: False,  # needs the example input: detect_input runs noise_census
    description="any torch module whose forward draws its own noise (hand-written "
    "Bayes-by-backprop layers with torch.randn_like, noise injection); one forward per MC "
    "sample",
    priority=65,
    detect_input=draws_own_noise,
    build_takes_input=True,
    check=_check_noise,
    auto_hint="for a forward that draws its own noise (torch.randn_like), pass "
    "posterior='stochastic'",
)
def build_stochastic(
    model: nn.Module, mode: SamplingMode, *, task: Task, seed: int | None, example: torch.Tensor
) -> BuiltModel:
    """A self-sampling network -> the sample loop running its forward once per MC sample;
    ``example [B, *F]``: the input a forward with side effects is traced on beforehand."""
    del mode, seed  # one mode; the graph's seeds are set by the driver
    if not isinstance(model, nn.Module):
        raise UnsupportedLayerError(
            f"the 'stochastic' family needs a torch module, got a {type(model).__name__}"
        )
    for name, mod in bayesian_layers(model):
        raise UnsupportedLayerError(
            f"layer '{name}' of type {type(mod).__name__} is a Bayesian-Torch layer (its "
            "in-place eps.normal_() cannot be traced); export it with posterior 'meanfield' or "
            "'flipout'"
        )
    # dropout (nn.Dropout, F.dropout by any name, SDPA's and MultiheadAttention's) as qbnn's
    # uniform masks, swapped outside the Scan (torch.export cannot trace aten dropout in a scan
    # body); everything else random in forward is rewritten in the graph
    net: nn.Module = mc_mode(copy.deepcopy(model))
    notes = ["the model's forward runs once per MC sample (its own noise, drawn afresh)"]
    effects = side_effects(model, example)
    if effects:  # traced functionally beforehand, with dropout already as qbnn's masks
        net = pure_forward(GraphDropoutNet(net), example)
        notes.append(effects.note())
    return BuiltModel(
        module=SampleLoopModel(_Unit(net), _Repeat(), task, context=partial(graph_noise, net)),
        reference=loop_sampler(mc_mode(copy.deepcopy(model))),
        notes=notes,
    )
