"""Mean-field Gaussian posteriors: Bayesian-Torch ``*Reparameterization`` layers."""

from __future__ import annotations

from torch import nn

from qbnn.runtimes.contract import Task

from ..modules.btlayers import REPARAM_TYPES, bayesian_layers
from ..registry import BuiltModel, SamplingMode, register_exporter
from .bayesiantorch import BAYESIAN_TORCH, BT_TENSORS, build_gaussian, refuse_unsupported_layers

__all__ = ["build_meanfield"]


def _detect(model: object) -> bool:
    if not isinstance(model, nn.Module):
        return False
    return any(type(m).__name__ in REPARAM_TYPES for _, m in bayesian_layers(model))


@register_exporter(
    "meanfield",
    modes=("weight", "lrt", "frozen"),
    default_mode="weight",
    detect=_detect,
    description="Bayesian-Torch Linear/Conv1d/Conv2d Reparameterization layers (and dnn_to_bnn)",
    priority=60,
    trainer=BAYESIAN_TORCH,
    whole_network=True,
    tensors=BT_TENSORS,
    undetected=refuse_unsupported_layers,
)
def build_meanfield(
    model: nn.Module, mode: SamplingMode, *, task: Task, seed: int | None
) -> BuiltModel:
    """Mean-field model -> export module; see :func:`.bayesiantorch.build_gaussian`."""
    return build_gaussian(
        model, mode, family="meanfield", supported=REPARAM_TYPES, task=task, seed=seed
    )
