"""Top-level export modules: sample-axis tiling and the in-graph uncertainty summary.

Both wrappers take ``(input [B, *F], template [S])`` where only the *length* of ``template``
matters: after export it is replaced by ``ConstantOfShape(num_samples)`` so S becomes a scalar
graph input (see :mod:`qbnn.exporters.graph`).
"""

from __future__ import annotations

import torch
from torch import nn

from qbnn.runtimes.contract import Task

from .heads import Head, to_probs
from .layers import SampleContext

__all__ = ["EnsembleModel", "SampledModel", "uncertainty_head"]


def _first(out):
    """Bayesian-Torch models often return ``(logits, kl)``: keep the prediction."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(torch.clamp(p, min=1e-12))).sum(-1)


def uncertainty_head(
    per_sample: torch.Tensor,
    task: Task,
    heteroscedastic: bool = False,
    noise_variance: float = 0.0,
    head: Head | str = Head.LOGITS,
) -> tuple[torch.Tensor, ...]:
    """Contract outputs from per-sample network outputs ``[S, B, C]`` or ``[S, B, D]``.

    Classification: ``probs [S,B,C], mean_probs [B,C], predictive_entropy [B],
    expected_entropy [B], mutual_information [B]``; ``head`` says what the network returns
    (logits, probs or log_probs) and ``probs`` is :func:`~qbnn.exporters.heads.to_probs` of it.
    Regression: ``mean [S,B,D], pred_mean [B,D], pred_variance [B,D]``. Heteroscedastic heads
    output ``[S, B, 2D]`` (mean, log-variance) and add ``variance [S,B,D]``; then
    ``pred_variance = E[variance] + Var[mean]`` (law of total variance). Homoscedastic heads add
    a fixed observation-noise variance ``noise_variance`` (e.g. Laplace's ``sigma_noise**2``).
    """
    if task == Task.REGRESSION and heteroscedastic:
        d = per_sample.shape[-1] // 2
        mean, var = per_sample[..., :d], torch.exp(per_sample[..., d:])
        pred_mean = mean.mean(0)
        spread = ((mean - pred_mean.unsqueeze(0)) ** 2).mean(0)
        return mean, var, pred_mean, var.mean(0) + spread
    if task == Task.REGRESSION:
        pred_mean = per_sample.mean(0)
        pred_var = ((per_sample - pred_mean.unsqueeze(0)) ** 2).mean(0)
        if noise_variance:
            pred_var = pred_var + noise_variance
        return per_sample, pred_mean, pred_var
    probs = to_probs(per_sample, head)
    mean_probs = probs.mean(0)
    pe = _entropy(mean_probs)
    ee = _entropy(probs).mean(0)
    mi = torch.clamp(pe - ee, min=0.0)
    return probs, mean_probs, pe, ee, mi


class SampledModel(nn.Module):
    """Runs a network whose stochastic layers were swapped for export-time layers.

    The input ``[B, *F]`` is tiled to ``[S * B, *F]`` (sample-major), the network runs once,
    and its output is reshaped to ``[S, B, C]`` before the uncertainty head.
    """

    def __init__(self, net: nn.Module, ctx: SampleContext, task: Task) -> None:
        super().__init__()
        self.net = net
        self.ctx = ctx
        self.task = task
        self.heteroscedastic = False  # set by the export driver
        self.noise_variance = 0.0  # set by the export driver
        self.head = Head.LOGITS  # set by the export driver

    def forward(self, x: torch.Tensor, template: torch.Tensor):
        self.ctx.template = template
        s, b = template.shape[0], x.shape[0]
        xs = x.unsqueeze(0).expand(s, *x.shape).reshape(s * b, *x.shape[1:])
        out = _first(self.net(xs))
        out = out.reshape(s, b, -1)
        return uncertainty_head(
            out, self.task, self.heteroscedastic, self.noise_variance, self.head
        )


class EnsembleModel(nn.Module):
    """K deterministic members; the sample axis walks the members (sample s uses s mod K)."""

    def __init__(self, members: list[nn.Module], task: Task) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.task = task
        self.heteroscedastic = False  # set by the export driver
        self.noise_variance = 0.0  # set by the export driver
        self.head = Head.LOGITS  # set by the export driver

    def forward(self, x: torch.Tensor, template: torch.Tensor):
        b = x.shape[0]
        outs = torch.stack([_first(m(x)).reshape(b, -1) for m in self.members])  # [K, B, C]
        k = len(self.members)
        idx = torch.remainder(torch.arange(template.shape[0]), k)
        return uncertainty_head(
            outs[idx], self.task, self.heteroscedastic, self.noise_variance, self.head
        )
