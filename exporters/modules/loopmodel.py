"""The sample loop: the network runs once per Monte-Carlo sample with that sample's parameters.

Weight-sampled posteriors (mean-field ``weight`` mode, whole-network Laplace/SWAG/Gaussian,
``frozen:K`` draws, same-architecture ensembles) all have the same shape: per MC sample ``s``
one full parameter set, shared by the batch. :class:`SampleLoopModel` draws (or gathers) the
parameters of all S samples at once as stacked tensors ``[S, *shape]`` and then runs the
*ordinary* network once per sample inside an ONNX ``Scan`` (``torch._higher_order_ops.scan``,
which ``torch.onnx.export`` lowers to ``Scan``): every Conv / Gemm / MatMul is the network's
own kernel with a run-time weight, so S samples cost about S deterministic passes plus the
noise, and ``num_samples`` stays a run-time input (the Scan's trip count is the stacked
tensors' leading dimension).

The per-sample parameters reach the network through :func:`torch.func.functional_call`, so the
network itself is a plain deterministic module (its Bayesian layers swapped for
:class:`~qbnn.exporters.modules.layers.FixedLayer` placeholders, or the user's own Linear / Conv /
BatchNorm layers for vector posteriors).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch._higher_order_ops.scan import scan

from qbnn.runtimes.contract import Task

from ..tensors import SourceMoments
from .heads import Head
from .noise import normal_like
from .wrapper import exact_head, first_output, uncertainty_head

#: ``frozen:K`` graphs with K up to this many draws hold K copies of the network with constant
#: weights (the fastest kernels and static int8 apply); above it the draws are stored stacked and
#: run in the sample loop, so graph size and export time stop growing with K.
UNROLL_MAX = 32

__all__ = [
    "SOURCE_MOMENTS",
    "UNROLL_MAX",
    "GaussianSource",
    "ParamSource",
    "SampleLoopModel",
    "StackedDraws",
    "gather_samples",
    "stack_state_dicts",
]


def gather_samples(stack: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """Rows ``s mod K`` of ``stack [K, *shape]`` for ``s`` in ``0..S-1`` -> ``[S, *shape]``;
    ``S`` is the length of ``template [S]``."""
    idx = torch.remainder(torch.arange(template.shape[0]), stack.shape[0])
    return stack[idx]


class ParamSource(nn.Module):
    """Produces the stacked per-sample parameters of one forward pass.

    ``forward(template [S]) -> list of [S, *shape_i]`` tensors, and ``unpack(per_sample)``
    turns one sample's slices (the same list without the leading S) into a
    ``{parameter or buffer name: tensor}`` dict for :func:`torch.func.functional_call`.
    """

    def forward(self, template: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def unpack(self, per_sample: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover


class StackedDraws(ParamSource):
    """K fixed parameter sets stored stacked (``frozen:K`` draws, ensemble members, weight
    samples): named tensors ``[K, *shape]``; sample ``s`` uses set ``s mod K``.

    The graph holds one stacked initializer per parameter, so its node count and export time do
    not grow with K.
    """

    def __init__(self, stacks: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.names = list(stacks)
        for i, name in enumerate(self.names):
            self.register_buffer(f"stack_{i}", stacks[name].detach().float().contiguous())

    @property
    def k(self) -> int:
        return int(self.stack_0.shape[0])

    def forward(self, template: torch.Tensor) -> list[torch.Tensor]:
        return [gather_samples(stack, template) for stack in self.stacks()]

    def stacks(self) -> list[torch.Tensor]:
        """The K parameter sets, stacked ``[K, *shape]`` per name."""
        return [getattr(self, f"stack_{i}") for i in range(len(self.names))]

    def member_states(self) -> list[dict[str, torch.Tensor]]:
        """The K parameter sets as ``{name: tensor}`` dicts."""
        stacks = [getattr(self, f"stack_{i}") for i in range(len(self.names))]
        return [{n: st[k] for n, st in zip(self.names, stacks, strict=True)} for k in range(self.k)]

    def unpack(self, per_sample: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, per_sample, strict=True))


#: compress's reader of :class:`GaussianSource`'s buffers under :class:`SampleLoopModel`'s
#: ``source``: ``source.mu__conv1__weight`` is the posterior mean of ``conv1.weight``
SOURCE_MOMENTS = SourceMoments("source", mu="mu", sigma="sigma")


class GaussianSource(ParamSource):
    """Mean-field Gaussian parameters ``W ~ N(mu, sigma^2)`` elementwise, drawn per MC sample:
    ``W_s = mu + sigma * eps_s`` with ``eps_s [S, *shape]`` from the portable Box-Muller noise
    (one standard normal per parameter and sample, shared by the batch; Bayesian-Torch's
    ``weight`` sampling). ``posterior``: ``{name: (mu, sigma)}``, both ``[*shape]`` float32.
    """

    def __init__(self, posterior: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.names = list(posterior)
        # buffer (and so ONNX initializer) names say which parameter they belong to:
        # ``source.mu__conv1__weight`` for the posterior mean of ``conv1.weight``
        sep, mu_, sigma_ = SOURCE_MOMENTS.sep, SOURCE_MOMENTS.mu, SOURCE_MOMENTS.sigma
        self._keys = [name.replace(".", sep) for name in self.names]
        for key, name in zip(self._keys, self.names, strict=True):
            mu, sigma = posterior[name]
            self.register_buffer(f"{mu_}{sep}{key}", mu.detach().float().clone())
            self.register_buffer(f"{sigma_}{sep}{key}", sigma.detach().float().clone())

    def forward(self, template: torch.Tensor) -> list[torch.Tensor]:
        s = template.shape[0]
        out = []
        for key in self._keys:
            mu = getattr(self, f"{SOURCE_MOMENTS.mu}{SOURCE_MOMENTS.sep}{key}")
            sigma = getattr(self, f"{SOURCE_MOMENTS.sigma}{SOURCE_MOMENTS.sep}{key}")
            tmpl = template.reshape(s, *((1,) * mu.dim())).expand(s, *mu.shape)
            out.append(mu + sigma * normal_like(tmpl))
        return out

    def unpack(self, per_sample: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, per_sample, strict=True))


def stack_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{name: [K, *shape]}`` for every floating-point entry that differs between the K state
    dicts; entries equal in all of them (and integer buffers) stay in the network."""
    out: dict[str, torch.Tensor] = {}
    first = states[0]
    for name, value in first.items():
        if not torch.is_floating_point(value):
            continue
        vals = [s[name] for s in states]
        if all(torch.equal(v, value) for v in vals[1:]):
            continue
        out[name] = torch.stack([v.detach().float() for v in vals])
    return out


class SampleLoopModel(nn.Module):
    """``net`` evaluated once per MC sample inside an ONNX ``Scan``.

    ``forward(x [B, *F], template [S])``: ``source(template)`` gives the stacked parameters
    ``[S, *shape]``; the Scan body runs ``net(x)`` with sample ``s``'s parameters and emits
    ``[B, C]``; the stacked ``[S, B, C]`` go through :func:`uncertainty_head`. Exact sources
    (:class:`StackedDraws`) run the Scan over all K sets and go through :func:`exact_head`.
    ``context``: entered around the whole forward, outside the Scan (e.g.
    :func:`~qbnn.exporters.modules.dropout.graph_noise`, whose ``TorchFunctionMode`` the Scan's
    tracer refuses inside its body); None for none.
    """

    def __init__(
        self,
        net: nn.Module,
        source: ParamSource,
        task: Task,
        context: Callable[[], contextlib.AbstractContextManager] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.source = source
        self.task = task
        self.context = context or contextlib.nullcontext
        self.heteroscedastic = False  # set by the export driver
        self.noise_variance = 0.0  # set by the export driver
        self.head = Head.LOGITS  # set by the export driver

    def per_sample(self, x: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
        """Network outputs ``[S, B, C]`` (pre-softmax)."""
        return self._scan(x, self.source(template))

    def _scan(self, x: torch.Tensor, stacked: list[torch.Tensor]) -> torch.Tensor:
        net, unpack, b = self.net, self.source.unpack, x.shape[0]

        def body(carry: torch.Tensor, params: list[torch.Tensor]):
            out = torch.func.functional_call(net, unpack(params), (x,), strict=False)
            return carry.clone(), first_output(out).reshape(b, -1)

        _, outs = scan(body, torch.zeros(1, dtype=x.dtype), stacked)
        return outs

    def forward(self, x: torch.Tensor, template: torch.Tensor):
        with self.context():
            return self._forward(x, template)

    def _forward(self, x: torch.Tensor, template: torch.Tensor):
        if isinstance(self.source, StackedDraws):  # exact: all K members, uniform summaries
            out = self._scan(x, self.source.stacks())
            return exact_head(
                out, template, self.task, self.heteroscedastic, self.noise_variance, self.head
            )
        out = self.per_sample(x, template)
        return uncertainty_head(
            out, self.task, self.heteroscedastic, self.noise_variance, self.head
        )
