"""Flipout posteriors: Bayesian-Torch ``LinearFlipout`` / ``Conv1dFlipout`` / ``Conv2dFlipout``."""

from __future__ import annotations

from torch import nn

from qbnn.runtimes.contract import Task

from .btlayers import FLIPOUT_TYPES, bayesian_layers
from .gaussian import build_gaussian
from .registry import BuiltModel, SamplingMode, register_exporter

__all__ = ["build_flipout"]


def _detect(model: object) -> bool:
    if not isinstance(model, nn.Module):
        return False
    return any(type(m).__name__ in FLIPOUT_TYPES for _, m in bayesian_layers(model))


@register_exporter(
    "flipout",
    modes=("flipout", "weight", "lrt", "frozen"),
    default_mode="flipout",
    detect=_detect,
    description="Bayesian-Torch Linear/Conv1d/Conv2d Flipout layers",
)
def build_flipout(
    model: nn.Module, mode: SamplingMode, *, task: Task, seed: int | None
) -> BuiltModel:
    """Flipout model -> export module (flipout estimator by default; the layers' Gaussian
    posterior can also be exported with ``weight``, ``lrt`` or ``frozen:K``)."""
    return build_gaussian(
        model, mode, family="flipout", supported=FLIPOUT_TYPES, task=task, seed=seed
    )
