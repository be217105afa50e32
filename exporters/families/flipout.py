"""Flipout posteriors: Bayesian-Torch ``LinearFlipout`` / ``Conv1dFlipout`` / ``Conv2dFlipout``."""

from __future__ import annotations

from torch import nn

from qbnn.runtimes.contract import Task

from ..modules.btlayers import FLIPOUT_TYPES, bayesian_layers
from ..registry import BuiltModel, SamplingMode, register_exporter
from .bayesiantorch import BAYESIAN_TORCH, BT_TENSORS, build_gaussian, refuse_unsupported_layers

__all__ = ["build_flipout"]


def _detect(model: object) -> bool:
    if not isinstance(model, nn.Module):
        return False
    return any(type(m).__name__ in FLIPOUT_TYPES for _, m in bayesian_layers(model))


@register_exporter(
    "flipout",
    modes=("weight", "flipout", "lrt", "frozen"),
    default_mode="weight",
    detect=_detect,
    description="Bayesian-Torch Linear/Conv1d/Conv2d Flipout layers",
    priority=50,
    trainer=BAYESIAN_TORCH,
    whole_network=True,
    tensors=BT_TENSORS,
    undetected=refuse_unsupported_layers,
)
def build_flipout(
    model: nn.Module, mode: SamplingMode, *, task: Task, seed: int | None
) -> BuiltModel:
    """Flipout model -> export module; ``weight`` mode (the sample loop) by default.

    Flipout (Wen et al., ICLR 2018) is a training-time variance-reduction trick: it
    decorrelates the weight perturbation across the rows of a mini-batch. Each row's effective
    weight ``mu + sigma * (eps * s_out s_in^T)`` is still an exact draw of ``N(mu, sigma^2)``
    (``eps`` is symmetric and independent of the signs), so the per-example predictive, and
    with it mean_probs, entropy and MI of every row, has the same law under ``weight``
    sampling (one draw per MC sample shared by the batch), which costs about S deterministic
    passes. ``flipout`` mode (the estimator itself, rows decorrelated) stays available.
    """
    return build_gaussian(
        model, mode, family="flipout", supported=FLIPOUT_TYPES, task=task, seed=seed
    )
