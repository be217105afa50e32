"""Classifier heads: what a network's forward returns per sample (:class:`Head`, :class:`HeadSpec`),
how the graph turns it into probabilities (:func:`to_probs`), and :class:`PairHead` for a
``(mean, log_var)`` regression network. Detection from the example input lives in
:mod:`qbnn.exporters.checks.outputform`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import nn

__all__ = [
    "Head",
    "HeadSpec",
    "OutputKey",
    "PairHead",
    "as_spec",
    "to_probs",
]


class Head(StrEnum):
    """What a classifier's forward returns per sample: ``[B, C]`` of this form.

    ``logits`` / ``probs`` / ``log_probs``: one categorical over C classes (softmax of logits).
    ``multilabel`` / ``multilabel_probs``: K independent labels (a Bernoulli per label), the
    network returning their logits (``p = sigmoid(z)`` per label) or their probabilities (a
    network ending in ``nn.Sigmoid`` / ``torch.sigmoid``). Never a softmax over the labels.
    """

    LOGITS = "logits"
    PROBS = "probs"
    LOG_PROBS = "log_probs"
    MULTILABEL = "multilabel"
    MULTILABEL_PROBS = "multilabel_probs"

    @property
    def multilabel(self) -> bool:
        """K independent Bernoulli labels (sigmoid per label), not one categorical."""
        return self in (Head.MULTILABEL, Head.MULTILABEL_PROBS)


@dataclass(frozen=True)
class HeadSpec:
    """A classifier head: the ``form`` of the network's output and its per-row ``shape``
    (``(C,)``, ``(C, *spatial)``, ``(1,)`` for a Bernoulli head; ``()`` = flat ``[C]``)."""

    form: Head = Head.LOGITS
    shape: tuple[int, ...] = ()

    @property
    def binary(self) -> bool:
        """One output per row (or per position): a Bernoulli head reported as two classes
        (a multi-label head with K = 1 stays one label)."""
        return len(self.shape) >= 1 and self.shape[0] == 1 and not self.multilabel

    @property
    def multilabel(self) -> bool:
        """K independent labels ``[B, K]`` (see :class:`Head`)."""
        return self.form.multilabel

    @property
    def dense(self) -> bool:
        """``[B, C, *spatial]``: per-position classification."""
        return len(self.shape) > 1

    @property
    def value(self) -> str:
        return self.form.value


def as_spec(head: Head | str | HeadSpec) -> HeadSpec:
    """``head`` as a :class:`HeadSpec` (a bare form means a flat ``[C]`` output)."""
    return head if isinstance(head, HeadSpec) else HeadSpec(Head(head))


def to_probs(per_sample: torch.Tensor, head: Head | str | HeadSpec) -> torch.Tensor:
    """Per-sample probabilities from the network's outputs ``[S, B, ...]`` (float32/64).

    The output is reshaped to ``[S, B, *head.shape]`` and converted over the class axis (axis 2):
    ``softmax`` of logits, probabilities unchanged, ``exp`` of log-probabilities. A Bernoulli
    head (one column) becomes two classes ``[1 - p, p]`` with ``p = sigmoid(logit)`` (computed
    as ``[sigmoid(-z), sigmoid(z)]``), ``p``, or ``exp(log p)``. Returns ``[S, B, C, *spatial]``
    (``C = 2`` for a Bernoulli head). A multi-label head gives the K per-label probabilities
    ``[S, B, K]``: ``sigmoid(z)`` of logits, probabilities unchanged (no normalisation: a row
    sums to anything in ``[0, K]``).
    """
    spec = as_spec(head)
    if spec.shape:
        per_sample = per_sample.reshape(*per_sample.shape[:2], *spec.shape)
    if spec.form == Head.MULTILABEL:
        return torch.sigmoid(per_sample)
    if spec.form == Head.MULTILABEL_PROBS:
        return per_sample
    if spec.binary:
        if spec.form == Head.LOGITS:
            return torch.cat([torch.sigmoid(-per_sample), torch.sigmoid(per_sample)], dim=2)
        p = per_sample if spec.form == Head.PROBS else torch.exp(per_sample)
        return torch.cat([1.0 - p, p], dim=2)
    if spec.form == Head.PROBS:
        return per_sample
    if spec.form == Head.LOG_PROBS:
        return torch.exp(per_sample)
    return torch.softmax(per_sample, dim=2)


class PairHead(nn.Module):
    """``net(x) -> (mean [B, D], log_var [B, D])`` as one tensor ``[B, 2D]`` (mean first)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, log_var = self.net(x)[:2]
        b = mean.shape[0]
        return torch.cat([mean.reshape(b, -1), log_var.reshape(b, -1)], dim=-1)


class OutputKey(nn.Module):
    """``net(x)[key]``: the prediction of a forward that returns a dict (``key`` a string) or a
    tuple / list (``key`` an int index), e.g. Hugging Face's ``{"logits": [B, C]}``."""

    def __init__(self, net: nn.Module, key: str | int) -> None:
        super().__init__()
        self.net = net
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[self.key]
