"""Top-level export modules: sample-axis tiling and the in-graph uncertainty summary.

Both wrappers take ``(input [B, *F], template [S])`` where only the *length* of ``template``
matters: after export it is replaced by ``ConstantOfShape(num_samples)`` so S becomes a scalar
graph input (see :mod:`qbnn.exporters.passes.finalize`).
"""

from __future__ import annotations

import torch
from torch import nn

from qbnn.runtimes.contract import Task

from ..tensors import LayerMoments, MemberDraws, Slot
from .heads import Head, HeadSpec, as_spec, to_probs
from .layers import SampleContext

__all__ = [
    "FLIPOUT_MOMENTS",
    "LRT_MOMENTS",
    "MEMBER_DRAWS",
    "EnsembleModel",
    "SampledModel",
    "exact_head",
    "first_output",
    "multilabel_head",
    "uncertainty_head",
]

#: compress's readers of the initializers these modules name: :class:`EnsembleModel`'s
#: ``members.<k>.<layer>.weight``, and under :class:`SampledModel`'s ``net`` the buffers of
#: :class:`~.layers.LRTLayer` (``mu_w``, ``var_w``, ...) and :class:`~.layers.FlipoutLayer`
#: (``mu_w``, ``sigma_w``, ...)
MEMBER_DRAWS = MemberDraws("members")
LRT_MOMENTS = LayerMoments(
    "net",
    {"mu_w": Slot.WEIGHT, "var_w": Slot.WEIGHT_SCALE, "mu_b": Slot.BIAS, "var_b": Slot.BIAS_SCALE},
    scale_kind="var",
)
FLIPOUT_MOMENTS = LayerMoments(
    "net",
    {
        "mu_w": Slot.WEIGHT,
        "sigma_w": Slot.WEIGHT_SCALE,
        "mu_b": Slot.BIAS,
        "sigma_b": Slot.BIAS_SCALE,
    },
    scale_kind="sigma",
)


def first_output(out):
    """Bayesian-Torch models often return ``(logits, kl)``: keep the prediction."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return -(p * torch.log(torch.clamp(p, min=1e-12))).sum(dim)


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Elementwise Bernoulli entropy ``H(p) = -p log p - (1 - p) log(1 - p)`` in nats."""
    q = 1.0 - p
    return -(p * torch.log(torch.clamp(p, min=1e-12)) + q * torch.log(torch.clamp(q, min=1e-12)))


def multilabel_head(probs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Contract outputs of K independent Bernoulli labels from per-sample probabilities
    ``probs [S, B, K]``: ``probs [S, B, K]``, ``mean_probs [B, K]`` (per-label predictive),
    the summaries ``predictive_entropy``, ``expected_entropy``, ``mutual_information [B]``
    and per label ``label_predictive_entropy`` (``H(mean_probs)``), ``label_expected_entropy``
    (mean over samples of ``H(probs)``), ``label_mutual_information`` (BALD per label) ``[B, K]``.

    Each summary is the **sum** over the labels: the entropy of the product of the per-label
    predictives (the joint entropy when labels are independent), the joint expected entropy
    (labels are independent given the weights), and their difference, which bounds the joint
    BALD score from above. A sum keeps K = 1 equal to a binary head and does not shrink with
    K the way a mean would.
    """
    mean_probs = probs.mean(0)
    lpe = _binary_entropy(mean_probs)
    lee = _binary_entropy(probs).mean(0)
    lmi = torch.clamp(lpe - lee, min=0.0)
    return probs, mean_probs, lpe.sum(-1), lee.sum(-1), lmi.sum(-1), lpe, lee, lmi


def uncertainty_head(
    per_sample: torch.Tensor,
    task: Task,
    heteroscedastic: bool = False,
    noise_variance: float = 0.0,
    head: Head | str | HeadSpec = Head.LOGITS,
) -> tuple[torch.Tensor, ...]:
    """Contract outputs from per-sample network outputs ``[S, B, C]`` or ``[S, B, D]``.

    Classification: ``probs [S,B,C], mean_probs [B,C], predictive_entropy [B],
    expected_entropy [B], mutual_information [B]``; ``head`` says what the network returns
    (logits, probs or log_probs) and ``probs`` is :func:`~.heads.to_probs` of it.
    With a :class:`~.heads.HeadSpec` layout the per-sample outputs (flattened
    ``[S, B, N]``) are read as ``[S, B, *shape]``: dense heads give ``probs [S, B, C, *spatial]``,
    ``mean_probs [B, C, *spatial]`` and entropy / MI maps ``[B, *spatial]`` (class axis only); a
    Bernoulli head gives two classes ``[1 - p, p]``; a multi-label head
    (:attr:`~.heads.HeadSpec.multilabel`) gives :func:`multilabel_head`'s eight outputs.
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
    probs = to_probs(per_sample, head)  # [S, B, C, *spatial], class axis 2
    if as_spec(head).multilabel:
        return multilabel_head(probs)
    mean_probs = probs.mean(0)
    pe = _entropy(mean_probs, 1)
    ee = _entropy(probs, 2).mean(0)
    mi = torch.clamp(pe - ee, min=0.0)
    return probs, mean_probs, pe, ee, mi


def exact_head(
    members: torch.Tensor,
    template: torch.Tensor,
    task: Task,
    heteroscedastic: bool = False,
    noise_variance: float = 0.0,
    head: Head | str | HeadSpec = Head.LOGITS,
) -> tuple[torch.Tensor, ...]:
    """Contract outputs of an exact posterior (ensemble members, SG-MCMC samples, ``frozen:K``
    draws) from the outputs of **all** K members ``[K, B, ...]``.

    The summaries (``mean_probs``, entropies, MI; ``pred_mean``, ``pred_variance``) are the
    ensemble's own: uniform over the K members whatever S is (Lakshminarayanan et al., 2017,
    eq. 2). Only the per-sample outputs (``probs`` / ``mean`` / ``variance``) have S = length of
    ``template [S]`` rows, row ``s`` being member ``s mod K``.
    """
    outs = uncertainty_head(members, task, heteroscedastic, noise_variance, head)
    idx = torch.remainder(torch.arange(template.shape[0]), members.shape[0])
    per_sample = 2 if task == Task.REGRESSION and heteroscedastic else 1
    return tuple(o[idx] if i < per_sample else o for i, o in enumerate(outs))


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
        out = first_output(self.net(xs))
        out = out.reshape(s, b, -1)
        return uncertainty_head(
            out, self.task, self.heteroscedastic, self.noise_variance, self.head
        )


class EnsembleModel(nn.Module):
    """K deterministic members, all evaluated; summaries are uniform over the members and the
    per-sample outputs walk them (sample s is member s mod K), see :func:`exact_head`."""

    def __init__(self, members: list[nn.Module], task: Task) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.task = task
        self.heteroscedastic = False  # set by the export driver
        self.noise_variance = 0.0  # set by the export driver
        self.head = Head.LOGITS  # set by the export driver

    def forward(self, x: torch.Tensor, template: torch.Tensor):
        b = x.shape[0]
        outs = torch.stack([first_output(m(x)).reshape(b, -1) for m in self.members])  # [K, B, C]
        return exact_head(
            outs, template, self.task, self.heteroscedastic, self.noise_variance, self.head
        )
