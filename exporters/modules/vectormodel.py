"""Networks whose parameters come from a sampled vector ``theta [S, P]``.

Two shapes of posterior over a parameter vector (see :mod:`qbnn.exporters.modules.vector`):

- whole-network (diagonal/full/Kronecker Laplace over all weights, SWAG): every parameter in
  the posterior is read from its slice of ``theta``, per MC sample, and the network runs once per
  sample in the sample loop (:mod:`.loopmodel`), as mean-field ``weight`` mode;
- last-layer (laplace-torch's ``*LLLaplace``): the deterministic body runs **once** per input
  and only the final Linear layer is evaluated S times, so S samples cost little more than one
  forward pass.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from qbnn.runtimes.contract import Task
from qbnn.runtimes.errors import UnsupportedLayerError

from .heads import Head
from .layers import SampleContext
from .loopmodel import ParamSource, gather_samples
from .wrapper import exact_head, first_output, uncertainty_head

__all__ = [
    "last_layer_body",
    "VectorSource",
    "FrozenTable",
    "LastLayerModel",
    "ParamSlot",
    "param_slots",
    "snapshot",
]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class ParamSlot:
    """Where parameter ``name`` (of module ``module``, attribute ``attr``) lives in ``theta``."""

    name: str
    module: str
    attr: str
    start: int
    shape: tuple[int, ...]

    @property
    def stop(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return self.start + n


def param_slots(model: nn.Module, names: Sequence[str]) -> list[ParamSlot]:
    """Slots of the named parameters, laid out in ``names`` order (``parameters_to_vector``).

    Weights and biases of Linear, Conv1d, Conv2d and (eval-mode) BatchNorm1d/2d layers can be
    sampled; anything else raises :class:`UnsupportedLayerError` naming the parameter.
    """
    params = dict(model.named_parameters())
    out, start = [], 0
    for name in names:
        module, _, attr = name.rpartition(".")
        owner = model.get_submodule(module) if module else model
        if not isinstance(owner, _LAYERS + _NORMS) or attr not in ("weight", "bias"):
            raise UnsupportedLayerError(
                f"posterior parameter '{name}' belongs to a {type(owner).__name__}; qbnn samples "
                "parameters of Linear, Conv1d, Conv2d and BatchNorm1d/2d layers only (freeze the "
                "others with requires_grad=False before fitting, or use a last-layer posterior)"
            )
        if isinstance(owner, (nn.Conv1d, nn.Conv2d)) and isinstance(owner.padding, str):
            raise UnsupportedLayerError(
                f"{type(owner).__name__} '{module}' uses padding='{owner.padding}'; "
                "use integer padding"
            )
        if getattr(owner, "padding_mode", "zeros") != "zeros":
            raise UnsupportedLayerError(
                f"{type(owner).__name__} '{module}' uses padding_mode='{owner.padding_mode}'; "
                "sampled convolutions support padding_mode='zeros' only"
            )
        shape = tuple(params[name].shape)
        slot = ParamSlot(name, module, attr, start, shape)
        out.append(slot)
        start = slot.stop
    return out


class ParamContext(SampleContext):
    """A sample context that also carries this forward pass's ``theta [S, P]``."""

    def __init__(self) -> None:
        super().__init__()
        self.theta: torch.Tensor | None = None


def snapshot(model: nn.Module, slots: list[ParamSlot], theta: torch.Tensor) -> nn.Module:
    """A deterministic copy of ``model`` holding one posterior draw ``theta [P]``."""
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        for slot in slots:
            owner = net.get_submodule(slot.module) if slot.module else net
            getattr(owner, slot.attr).copy_(theta[slot.start : slot.stop].reshape(slot.shape))
    return net


class VectorSource(ParamSource):
    """Per-sample parameters of a whole-network posterior for the sample loop: ``sampler()``
    gives ``theta [S, P]``; sample ``s``'s slice ``theta[s, slot]`` becomes parameter
    ``slot.name`` of the network."""

    def __init__(self, sampler: nn.Module, ctx: SampleContext, slots: list[ParamSlot]) -> None:
        super().__init__()
        self.sampler = sampler
        self.ctx = ctx
        self.slots = slots

    def forward(self, template: torch.Tensor) -> list[torch.Tensor]:
        self.ctx.template = template
        return [self.sampler()]

    def unpack(self, per_sample: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        (theta,) = per_sample
        return {s.name: theta[s.start : s.stop].reshape(s.shape) for s in self.slots}


class FrozenTable(nn.Module):
    """K fixed draws ``theta [K, P]``; sample ``s`` uses draw ``s mod K``."""

    def __init__(self, draws: torch.Tensor, ctx: SampleContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.register_buffer("draws", draws.detach().float().clone())

    def forward(self) -> torch.Tensor:
        return gather_samples(self.draws, self.ctx.template)


class LastLayerModel(nn.Module):
    """Deterministic body once, sampled final Linear ``[out, in]`` S times.

    ``body(x [B, *F]) -> features [B, in]``; ``theta [S, out*in (+out)]`` in
    ``parameters_to_vector(last_layer.parameters())`` order (weight then bias).
    """

    def __init__(
        self,
        body: nn.Module,
        sampler: nn.Module,
        ctx: SampleContext,
        out_features: int,
        in_features: int,
        bias: bool,
        task: Task,
    ) -> None:
        super().__init__()
        self.body = body
        self.sampler = sampler
        self.ctx = ctx
        self.out_features, self.in_features, self.bias = out_features, in_features, bias
        self.task = task
        self.heteroscedastic = False  # set by the export driver
        self.noise_variance = 0.0  # set by the export driver
        self.head = Head.LOGITS  # set by the export driver

    def forward(self, x: torch.Tensor, template: torch.Tensor):
        self.ctx.template = template
        feats = first_output(self.body(x))
        feats = feats.reshape(feats.shape[0], self.in_features)  # [B, in]
        frozen = isinstance(self.sampler, FrozenTable)
        theta = self.sampler.draws if frozen else self.sampler()  # [K, P] or [S, P]
        s = theta.shape[0]
        o, i = self.out_features, self.in_features
        w = theta[:, : o * i].reshape(s, o, i)
        out = torch.matmul(feats.unsqueeze(0), w.transpose(1, 2))  # [S, B, out]
        if self.bias:
            out = out + theta[:, o * i : o * i + o].unsqueeze(1)
        if frozen:  # exact: all K draws, uniform summaries
            return exact_head(
                out, template, self.task, self.heteroscedastic, self.noise_variance, self.head
            )
        return uncertainty_head(
            out, self.task, self.heteroscedastic, self.noise_variance, self.head
        )


def last_layer_body(model: nn.Module, last_layer: str) -> nn.Module:
    """An eval-mode copy of ``model`` whose ``last_layer`` is ``nn.Identity`` (its features)."""
    body = copy.deepcopy(model).eval()
    parent, _, child = last_layer.rpartition(".")
    setattr(body.get_submodule(parent) if parent else body, child, nn.Identity())
    return body
