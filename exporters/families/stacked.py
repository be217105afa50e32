"""Members or MC samples stacked on the batch axis: one network whose forward returns
``[k * B, ...]`` for an input ``[B, ...]``, member-major.

torch-uncertainty's one-network ensembles (packed ensembles, BatchEnsemble, MIMO, Masksembles)
and its ensemble / MC-dropout wrappers evaluate this way. ``auto`` detects it from the forward
(:func:`~qbnn.exporters.checks.stacking.stacked_rows`: k rows per input row at two batch
sizes). A deterministic forward is an exact ensemble of k members computed in one pass
(``members:k``; summaries uniform over the members, ``probs`` row ``s`` is member
``s mod k``); a random forward (dropout kept on in eval, as MC-dropout wrappers do) gives k MC
samples per pass (``samples:k``; the graph tiles the input ``ceil(S / k)`` times). ``:k``
states k where detection cannot (a forward that fails at a second batch size).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from qbnn.runtimes.contract import Task
from qbnn.runtimes.errors import ConfigError, ExportError, UnsupportedLayerError

from ..checks.stacking import shared_draws, stacked_output, stacked_rows
from ..modules.batchfree import batch_free
from ..modules.dropout import GraphDropoutNet
from ..modules.stacked import StackedMembers, StackedSamples, member_rows, sample_rows
from ..modules.wrapper import first_output
from ..registry import BuiltModel, SamplingMode, register_exporter
from ..tensors import CompressTensors

__all__ = ["build_stacked"]

_HOW = "pass posterior='stacked', sampling='members:K' (or 'samples:K' for a random forward)"


def _detect(model: object, x: torch.Tensor) -> bool:
    return stacked_rows(model, x) is not None


def _random(model: nn.Module, x: torch.Tensor) -> bool:
    a, b = stacked_output(model, x, 0), stacked_output(model, x, 1)
    return a is not None and b is not None and not torch.equal(a, b)


def _resolve(model: object, x: torch.Tensor, mode: SamplingMode) -> SamplingMode:
    """``auto`` -> ``members`` (deterministic forward) or ``samples`` (random forward), with k
    read from the forward unless the mode states it; contradictions raise ConfigError."""
    if not isinstance(model, nn.Module):
        raise ExportError(f"the 'stacked' family needs a torch module, got {type(model).__name__}")
    found = stacked_rows(model, x)
    k = mode.k or (found.k if found is not None else None)
    out = stacked_output(model, x)
    if k is None:
        rows = "fails" if out is None else f"returns {list(out.shape)}"
        raise ExportError(
            f"could not find how many members the model stacks on the batch axis (for an input "
            f"of shape {list(x.shape)} its forward {rows}, and k rows per input row must hold at "
            f"two batch sizes); {_HOW} to state k"
        )
    if out is not None and out.shape[0] != k * x.shape[0]:
        raise ConfigError(
            f"sampling '{mode}' states {k} members per input row, but the model maps an input of "
            f"shape {list(x.shape)} to {list(out.shape)} (expected {k * x.shape[0]} rows); "
            f"use the k its forward stacks"
        )
    random = found.random if found is not None and found.k == k else _random(model, x)
    name = mode.name if mode.name != "auto" else ("samples" if random else "members")
    if name == "members" and random:
        raise ConfigError(
            "the model's forward is random (two passes on the same input differ), so its "
            f"stacked rows are MC samples, not members; use sampling='samples:{k}'"
        )
    if name == "samples" and not random:
        raise ConfigError(
            "the model's forward is deterministic, so its stacked rows are ensemble members; "
            f"use sampling='members:{k}'"
        )
    if name == "samples":
        _check_per_row_noise(model, x)
    return SamplingMode(name, k)


def _check_per_row_noise(model: nn.Module, x: torch.Tensor) -> None:
    """The graph runs the forward once over the input tiled ceil(S / k) times: a draw shaped
    like a weight would be shared by every tile instead of drawn per pass; refused."""
    shared = shared_draws(model, x)
    if shared:
        op, shape = shared[0]
        raise UnsupportedLayerError(
            f"the model's forward stacks MC samples but draws noise of shape {list(shape)} "
            f"({op}) that does not follow the batch: the graph computes all S samples in one "
            "pass over the tiled input, where that draw would be shared by every pass's "
            "samples; not supported for stacked samples: draw the noise per row, or export "
            "the inner network (posterior='stochastic')"
        )


class _MemberView(nn.Module):
    """Member 0 of a stacked forward: ``[B, *F] -> [B, ...]`` (for the output-form checks)."""

    def __init__(self, net: nn.Module, k: int) -> None:
        super().__init__()
        self.net, self.k = net, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = first_output(self.net(x))
        return out.reshape(self.k, x.shape[0], *out.shape[1:])[0]


def _view(model: object, x: torch.Tensor, mode: SamplingMode) -> nn.Module | None:
    del x
    return _MemberView(model, mode.k) if isinstance(model, nn.Module) and mode.k else None


def _members_sampler(model: nn.Module, k: int):
    def sample(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
        del gen
        with torch.no_grad():
            outs = member_rows(first_output(model(x)), k, x.shape[0])
        return outs[torch.remainder(torch.arange(s), k)]

    return sample


def _samples_sampler(model: nn.Module, k: int):
    """``ceil(S / k)`` passes of the model's own forward, laid out as the graph lays out its
    one pass over the tiled input (:func:`sample_rows`)."""

    def sample(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        n = -(-s // k)
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            outs = [member_rows(first_output(model(x)), k, x.shape[0]) for _ in range(n)]
        per = torch.stack(outs, 1).reshape(k * n * x.shape[0], -1)  # [k, n, B, N] rows
        return sample_rows(per, k, n, x.shape[0])[:s]

    return sample


@register_exporter(
    "stacked",
    modes=("auto", "members", "samples"),
    default_mode="auto",
    detect=lambda model: False,  # needs the example input: detect_input runs the forward
    description="one network whose forward returns [k*B, ...] for [B, ...] inputs, k members "
    "or MC samples stacked member-major (torch-uncertainty packed ensembles, BatchEnsemble, "
    "MIMO, Masksembles, ensemble / MC-dropout wrappers)",
    priority=45,
    detect_input=_detect,
    tensors=CompressTensors(),  # the network's own weights, read directly
    auto_hint=f"for a forward that stacks k members on the batch axis unseen by detection, {_HOW}",
    counted_modes=("auto", "members", "samples"),
    resolve_mode=_resolve,
    view=_view,
)  # fmt: skip
def build_stacked(
    model: nn.Module, mode: SamplingMode, *, task: Task, seed: int | None
) -> BuiltModel:
    """A stacked forward -> one pass read as k members (exact) or k samples per tile."""
    del seed
    if not isinstance(model, nn.Module) or mode.k is None:
        raise UnsupportedLayerError("the 'stacked' family needs a torch module and k")
    k = mode.k
    net = copy.deepcopy(model).eval()
    notes = [f"{k} {mode.name} stacked on the batch axis per forward pass"]
    notes += [f"layer '{n}' rewritten without a fixed batch size" for n in batch_free(net)]
    ref = copy.deepcopy(model).eval()
    if mode.name == "members":
        return BuiltModel(StackedMembers(net, k, task), _members_sampler(ref, k), exact=True,
                          notes=notes)  # fmt: skip
    return BuiltModel(StackedSamples(GraphDropoutNet(net), k, task), _samples_sampler(ref, k),
                      notes=notes)  # fmt: skip
