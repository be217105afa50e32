"""Flipout posteriors: Bayesian-Torch ``LinearFlipout`` / ``Conv1dFlipout`` / ``Conv2dFlipout``."""

from __future__ import annotations

from torch import nn

from qbnn.runtimes.contract import Task

from ..modules.btlayers import FLIPOUT_TYPES, bayesian_layers
from ..registry import BuiltModel, SamplingMode, register_exporter
from .bayesiantorch import BAYESIAN_TORCH, BT_TENSORS, build_gaussian, refuse_unsupported_layers

__all__ = ["CONV_HINT", "build_flipout", "default_sampling"]

#: Bayesian-Torch's flipout convolutions, whose law ``weight`` sampling does not reproduce
FLIPOUT_CONV_TYPES = tuple(t for t in FLIPOUT_TYPES if t.startswith("Conv"))
#: appended to a self-check refusal of a flipout model with convolutions in another mode
CONV_HINT = (
    "Bayesian-Torch's Conv*Flipout layers draw their sign vectors per output position, a "
    "different law from one weight draw per sample: use sampling='flipout' (the default for "
    "models with flipout convolutions)"
)


def _detect(model: object) -> bool:
    if not isinstance(model, nn.Module):
        return False
    return any(type(m).__name__ in FLIPOUT_TYPES for _, m in bayesian_layers(model))


def _has_conv(model: object) -> bool:
    if not isinstance(model, nn.Module):
        return False
    return any(type(m).__name__ in FLIPOUT_CONV_TYPES for _, m in bayesian_layers(model))


def default_sampling(model: object) -> str:
    """``flipout`` when ``model`` holds a ``Conv1dFlipout`` / ``Conv2dFlipout``, else ``weight``."""
    return "flipout" if _has_conv(model) else "weight"


@register_exporter(
    "flipout",
    modes=("weight", "flipout", "lrt", "frozen"),
    default_mode="weight",
    default_for=default_sampling,
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
    """Flipout model -> export module; the default mode depends on the layers
    (:func:`default_sampling`).

    Flipout (Wen et al., ICLR 2018) decorrelates the weight perturbation across the rows of a
    mini-batch. In ``LinearFlipout`` each row's effective weight ``mu + sigma * (eps * s_out
    s_in^T)`` is still an exact draw of ``N(mu, sigma^2)`` (``eps`` is symmetric and
    independent of the signs), so every row's predictive has the same law under ``weight``
    sampling (one draw per MC sample shared by the batch, about S deterministic passes): the
    default for models without flipout convolutions. ``Conv2dFlipout`` draws ``s_in`` per
    input position and ``s_out`` per output position, so different output positions of one
    row see differently flipped perturbations: not one weight draw shared over positions.
    Their outputs' spread differs from ``weight`` sampling's (measured in
    ``benchmarks/results/flipout_law.md``), so models with flipout convolutions default to
    ``flipout`` mode (the estimator itself); other modes' self-check refusals name it.
    """
    built = build_gaussian(
        model, mode, family="flipout", supported=FLIPOUT_TYPES, task=task, seed=seed
    )
    if mode.name != "flipout" and _has_conv(model):
        built.hint = CONV_HINT
    return built
