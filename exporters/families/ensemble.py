"""Ensembles and weight samples: a list of same-architecture deterministic modules.

Covers deep ensembles, bootstrap ensembles and SG-MCMC / SWAG weight samples: each member is
one posterior sample; the graph's sample axis walks the members (sample ``s`` is member
``s mod K``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from qbnn.runtimes.contract import Task
from qbnn.runtimes.errors import ExportError, UnsupportedLayerError

from ..modules.btlayers import bayesian_layers
from ..modules.loopmodel import UNROLL_MAX, SampleLoopModel, StackedDraws, stack_state_dicts
from ..modules.wrapper import MEMBER_DRAWS, EnsembleModel
from ..registry import BuiltModel, SamplingMode, register_exporter
from ..tensors import CompressTensors
from .reference import member_sampler

__all__ = ["WeightSamples", "build_ensemble"]


@dataclass(frozen=True)
class WeightSamples:
    """Posterior weight samples as state dicts of one architecture.

    ``model``: the architecture (its own weights are not used); ``states``: one state dict per
    sample (SGLD / pSGLD / SGHMC draws, SWAG draws, checkpoints of a deep ensemble). Each must
    load into ``model`` with ``strict=True``.
    """

    model: nn.Module
    states: Sequence[Mapping[str, torch.Tensor]]

    def members(self) -> list[nn.Module]:
        """One deterministic copy of ``model`` per state dict."""
        if not self.states:
            raise ExportError("WeightSamples needs at least one state dict; got none")
        out = []
        for i, state in enumerate(self.states):
            net = copy.deepcopy(self.model).eval()
            try:
                net.load_state_dict(state, strict=True)
            except (RuntimeError, TypeError, AttributeError) as exc:
                why = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
                raise ExportError(f"weight sample {i} does not fit the model: {why}") from exc
            out.append(net)
        return out


def _detect(model: object) -> bool:
    return isinstance(model, (list, tuple, nn.ModuleList, WeightSamples))


def _check_members(members: list[nn.Module]) -> None:
    if len(members) < 1:
        raise ExportError("an ensemble needs at least one member; got an empty list")
    ref = members[0]
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    for i, m in enumerate(members):
        if not isinstance(m, nn.Module):
            raise ExportError(f"ensemble member {i} is a {type(m).__name__}, not a torch module")
        for name, mod in bayesian_layers(m):
            raise UnsupportedLayerError(
                f"ensemble member {i} holds Bayesian layer '{name}' ({type(mod).__name__}); "
                "ensemble members must be deterministic networks"
            )
        shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
        if type(m) is not type(ref) or shapes != ref_shapes:
            diff = sorted(set(shapes.items()) ^ set(ref_shapes.items()))[:3]
            raise ExportError(
                f"ensemble member {i} ({type(m).__name__}) does not match member 0 "
                f"({type(ref).__name__}); first differing parameters: {diff}"
            )


@register_exporter(
    "ensemble",
    modes=("members",),
    default_mode="members",
    detect=_detect,
    description="a list of same-architecture modules (deep/bootstrap ensembles) or "
    "WeightSamples (SG-MCMC / SWAG draws as state dicts)",
    priority=40,
    tensors=CompressTensors((MEMBER_DRAWS,)),
)
def build_ensemble(
    model: list[nn.Module] | WeightSamples, mode: SamplingMode, *, task: Task, seed: int | None
) -> BuiltModel:
    """K members -> one graph computing all members and indexing them by sample."""
    if isinstance(model, WeightSamples):
        model = model.members()
    if not isinstance(model, (list, tuple, nn.ModuleList)):
        raise ExportError(
            f"the 'ensemble' family needs a list of modules, got a {type(model).__name__}"
        )
    members = [copy.deepcopy(m).eval() for m in model]
    _check_members(members)
    notes = [f"{len(members)} members"]
    module: nn.Module = EnsembleModel(members, task)
    if len(members) > UNROLL_MAX:
        stacks = stack_state_dicts([m.state_dict() for m in members])
        module = SampleLoopModel(members[0], StackedDraws(stacks), task)
        notes.append(f"K > {UNROLL_MAX}: members stored stacked and run in the sample loop")
    return BuiltModel(module, member_sampler(members), exact=True, notes=notes)
