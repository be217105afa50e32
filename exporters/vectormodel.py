"""Networks whose parameters come from a sampled vector ``theta [S, P]``.

Two shapes of posterior over a parameter vector (see :mod:`qbnn.exporters.vector`):

- whole-network (diagonal/full/Kronecker Laplace over all weights, SWAG): every Linear/Conv
  parameter in the posterior is read from its slice of ``theta``, per MC sample, with the same
  per-sample kernels as mean-field ``weight`` mode;
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

from .btlayers import replace_modules
from .layers import SampleContext, _ExportLayer
from .ops import ConvSpec, apply_per_sample
from .wrapper import SampledModel, _first, uncertainty_head

__all__ = [
    "FrozenTable",
    "LastLayerModel",
    "ParamSlot",
    "VectorSampledModel",
    "param_slots",
    "sampled_network",
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


def _conv_spec(mod: nn.Module) -> ConvSpec | None:
    if isinstance(mod, nn.Linear):
        return None
    n = 1 if isinstance(mod, nn.Conv1d) else 2
    return ConvSpec(n, tuple(mod.stride), tuple(mod.padding), tuple(mod.dilation), mod.groups)


class ParamContext(SampleContext):
    """A sample context that also carries this forward pass's ``theta [S, P]``."""

    def __init__(self) -> None:
        super().__init__()
        self.theta: torch.Tensor | None = None


class ParamSampledLayer(_ExportLayer):
    """A Linear/Conv layer whose weight (and bias) are slices of ``ctx.theta`` per sample;
    parameters outside the posterior stay fixed."""

    def __init__(self, mod: nn.Module, slots: dict[str, ParamSlot], ctx: ParamContext) -> None:
        super().__init__(_conv_spec(mod), returns_kl=False)
        self.ctx = ctx
        self.slots = slots
        self._opt("fixed_weight", None if "weight" in slots else mod.weight)
        self._opt("fixed_bias", None if "bias" in slots or mod.bias is None else mod.bias)
        self.has_bias = mod.bias is not None

    def _param(self, attr: str, fixed: torch.Tensor | None) -> torch.Tensor | None:
        s = self.ctx.num_samples
        slot = self.slots.get(attr)
        if slot is None:
            return None if fixed is None else fixed.unsqueeze(0).expand(s, *fixed.shape)
        return self.ctx.theta[:, slot.start : slot.stop].reshape(s, *slot.shape)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        w = self._param("weight", self.fixed_weight)
        b = self._param("bias", self.fixed_bias) if self.has_bias else None
        return apply_per_sample(x, w, b, self.conv, self.ctx.num_samples)


class ParamSampledBatchNorm(nn.Module):
    """Eval-mode BatchNorm with a sampled affine transform: ``x_hat * gamma_s + beta_s``, the
    running statistics fixed (as in every MC sample of the torch model)."""

    def __init__(self, mod: nn.Module, slots: dict[str, ParamSlot], ctx: ParamContext) -> None:
        super().__init__()
        if mod.running_mean is None:
            raise UnsupportedLayerError(
                f"{type(mod).__name__} without running statistics cannot be exported"
            )
        self.ctx, self.slots = ctx, slots
        self.eps = float(mod.eps)
        self.register_buffer("mean", mod.running_mean.detach().clone())
        self.register_buffer("inv_std", torch.rsqrt(mod.running_var.detach() + mod.eps))
        self.register_buffer("fixed_weight", None if "weight" in slots else _affine(mod, "weight"))
        self.register_buffer("fixed_bias", None if "bias" in slots else _affine(mod, "bias"))

    def _param(self, attr: str, fixed: torch.Tensor) -> torch.Tensor:
        slot = self.slots.get(attr)
        if slot is None:
            return fixed.unsqueeze(0)  # [1, C]
        return self.ctx.theta[:, slot.start : slot.stop]  # [S, C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.ctx.num_samples
        c = self.mean.shape[0]
        view = (1, c) + (1,) * (x.dim() - 2)
        xhat = (x - self.mean.reshape(view)) * self.inv_std.reshape(view)  # [S*B, C, ...]
        xs = xhat.reshape(s, -1, *xhat.shape[1:])  # [S, B, C, ...]
        tail = (1,) * (x.dim() - 2)
        g = self._param("weight", self.fixed_weight).reshape(-1, 1, c, *tail)
        b = self._param("bias", self.fixed_bias).reshape(-1, 1, c, *tail)
        return (xs * g + b).reshape(x.shape)


def _affine(mod: nn.Module, attr: str) -> torch.Tensor:
    p = getattr(mod, attr)
    if p is not None:
        return p.detach().clone()
    n = mod.running_mean.shape[0]
    return torch.ones(n) if attr == "weight" else torch.zeros(n)


def sampled_network(model: nn.Module, slots: list[ParamSlot], ctx: ParamContext) -> nn.Module:
    """A copy of ``model`` whose posterior layers read their parameters from ``ctx.theta``."""
    by_module: dict[str, dict[str, ParamSlot]] = {}
    for slot in slots:
        by_module.setdefault(slot.module, {})[slot.attr] = slot
    net = copy.deepcopy(model).eval()

    def swap(name: str, mod: nn.Module) -> nn.Module | None:
        if name not in by_module:
            return None
        if isinstance(mod, _NORMS):
            return ParamSampledBatchNorm(mod, by_module[name], ctx)
        return ParamSampledLayer(mod, by_module[name], ctx)

    replace_modules(net, swap)
    return net


def snapshot(model: nn.Module, slots: list[ParamSlot], theta: torch.Tensor) -> nn.Module:
    """A deterministic copy of ``model`` holding one posterior draw ``theta [P]``."""
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        for slot in slots:
            owner = net.get_submodule(slot.module) if slot.module else net
            getattr(owner, slot.attr).copy_(theta[slot.start : slot.stop].reshape(slot.shape))
    return net


class VectorSampledModel(SampledModel):
    """Whole-network posterior: draw ``theta [S, P]`` once, then run the sampled network on the
    sample-tiled batch ``[S * B, *F]``."""

    def __init__(self, net: nn.Module, sampler: nn.Module, ctx: ParamContext, task: Task) -> None:
        super().__init__(net, ctx, task)
        self.sampler = sampler

    def forward(self, x: torch.Tensor, template: torch.Tensor):
        self.ctx.template = template
        self.ctx.theta = self.sampler()
        return super().forward(x, template)


class FrozenTable(nn.Module):
    """K fixed draws ``theta [K, P]``; sample ``s`` uses draw ``s mod K``."""

    def __init__(self, draws: torch.Tensor, ctx: SampleContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.register_buffer("draws", draws.detach().float().clone())

    def forward(self) -> torch.Tensor:
        idx = torch.remainder(torch.arange(self.ctx.num_samples), self.draws.shape[0])
        return self.draws[idx]


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

    def forward(self, x: torch.Tensor, template: torch.Tensor):
        self.ctx.template = template
        s = template.shape[0]
        feats = _first(self.body(x))
        feats = feats.reshape(feats.shape[0], self.in_features)  # [B, in]
        theta = self.sampler()  # [S, P]
        o, i = self.out_features, self.in_features
        w = theta[:, : o * i].reshape(s, o, i)
        out = torch.matmul(feats.unsqueeze(0), w.transpose(1, 2))  # [S, B, out]
        if self.bias:
            out = out + theta[:, o * i : o * i + o].unsqueeze(1)
        return uncertainty_head(out, self.task, self.heteroscedastic, self.noise_variance)
