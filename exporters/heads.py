"""The model's output form, inspected on the example input instead of assumed.

A classifier's forward may end in logits (the default), probabilities (``nn.Softmax``) or
log-probabilities (``F.log_softmax``); the graph turns each per-sample output into
probabilities the documented way (:func:`to_probs`): ``softmax(logits)``, ``probs`` as they
are, ``exp(log_probs)``. :func:`inspect_output` runs the user's network once on the example
input and tells the forms apart by name; a ``head`` the user names that contradicts what the
model returns is refused, never silently re-normalized.

Tuple outputs: a scalar second element is Bayesian-Torch's KL term (element 0 is the
prediction); a batch-shaped second element is a second head, and for regression
``(mean [B, D], log_var [B, D])`` is a heteroscedastic head (the two are concatenated to
``[B, 2D]`` by :class:`PairHead`). Dense classification outputs ``[B, C, *spatial]`` are
refused (not supported yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import nn

from qbnn.runtimes.contract import Task
from qbnn.runtimes.errors import ConfigError, UnsupportedLayerError

__all__ = [
    "Head",
    "OutputForm",
    "PairHead",
    "detect_head",
    "inspect_output",
    "network_of",
    "resolve_head",
    "to_probs",
]

HEAD_KEY = "qbnn.head"  # graph metadata key recording the head


class Head(StrEnum):
    """What a classifier's forward returns per sample: ``[B, C]`` of this form."""

    LOGITS = "logits"
    PROBS = "probs"
    LOG_PROBS = "log_probs"


@dataclass(frozen=True)
class OutputForm:
    """The model's output on the example input.

    ``shape``: the prediction's shape ``[B, ...]`` (element 0 of a tuple). ``pair``: the model
    returns ``(prediction, second head)`` with a batch-shaped second element.
    ``prediction``: the prediction tensor itself (detached), for :func:`detect_head`.
    """

    shape: tuple[int, ...]
    pair: bool
    prediction: torch.Tensor


def to_probs(per_sample: torch.Tensor, head: Head | str) -> torch.Tensor:
    """Per-sample probabilities ``[S, B, C]`` from the network's outputs ``[S, B, C]``:
    ``softmax`` of logits, probabilities unchanged, ``exp`` of log-probabilities."""
    head = Head(head)
    if head == Head.PROBS:
        return per_sample
    if head == Head.LOG_PROBS:
        return torch.exp(per_sample)
    return torch.softmax(per_sample, dim=-1)


def network_of(model: object) -> nn.Module | None:
    """The torch network whose forward defines the output form: the module itself, an
    ensemble's first member, or the ``.model`` of a posterior object (Laplace, SWAG, ...)."""
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, (list, tuple)) and model and isinstance(model[0], nn.Module):
        return model[0]
    net = getattr(model, "model", None)
    return net if isinstance(net, nn.Module) else None


def _run_eval(net: nn.Module, x: torch.Tensor):
    """``net(x)`` once in eval mode under no_grad, restoring train flags and the global RNG."""
    flags = [(m, m.training) for m in net.modules()]
    try:
        with torch.no_grad(), torch.random.fork_rng():
            net.eval()
            return net(x)
    finally:
        for m, training in flags:
            m.training = training


def inspect_output(net: nn.Module, x: torch.Tensor, task: Task) -> OutputForm:
    """Run ``net`` on ``x [B, *F]`` and classify its output; refuse forms qbnn cannot export.

    Raises :class:`UnsupportedLayerError` for tuples that are neither ``(prediction, KL
    scalar)`` nor ``(prediction, batch-shaped second head)``, a second head on a classifier,
    dense classification outputs ``[B, C, *spatial]`` and one-column classifiers.
    """
    try:
        out = _run_eval(net, x)
    except Exception:  # the sampler probe reports a model that rejects the input
        return OutputForm((), False, torch.empty(0))
    b = x.shape[0]
    pair = False
    if isinstance(out, (tuple, list)):
        out, pair = _split_tuple(out, b, task)
    if not isinstance(out, torch.Tensor):
        raise UnsupportedLayerError(
            f"the model returns {type(out).__name__}; qbnn exports forwards that return a tensor "
            "[B, ...] or a tuple (prediction, KL scalar | second head)"
        )
    pred = out.detach()
    if task == Task.CLASSIFICATION:
        _check_classifier_shape(tuple(pred.shape))
    return OutputForm(tuple(pred.shape), pair, pred)


def _split_tuple(out, b: int, task: Task) -> tuple[torch.Tensor, bool]:
    shapes = [list(getattr(o, "shape", [type(o).__name__])) for o in out]
    tensors = len(out) == 2 and all(isinstance(o, torch.Tensor) for o in out)
    batch = tensors and out[1].dim() >= 1 and out[1].shape[0] == b
    if batch and task == Task.REGRESSION and out[1].shape == out[0].shape:
        return out[0], True  # (mean, log_var): heteroscedastic
    if tensors and out[1].numel() == 1 and out[1].dim() <= 1:
        return out[0], False  # Bayesian-Torch's (prediction, kl)
    if batch and task == Task.REGRESSION:
        raise UnsupportedLayerError(
            f"the model returns a tuple of shapes {shapes}; a regression pair must be "
            "(mean, log_var) of the same shape [B, D]"
        )
    if batch:
        raise UnsupportedLayerError(
            f"the model returns a tuple of shapes {shapes}: a classifier with a second "
            "batch-shaped head is not supported; return the logits alone (or (logits, kl scalar))"
        )
    raise UnsupportedLayerError(
        f"the model returns a tuple of shapes {shapes}; qbnn exports (prediction, KL scalar) "
        "or, for regression, (mean [B, D], log_var [B, D])"
    )


def _check_classifier_shape(shape: tuple[int, ...]) -> None:
    if len(shape) > 2:
        raise UnsupportedLayerError(
            f"the classifier returns shape {list(shape)}: dense prediction [B, C, *spatial] "
            "(softmax over the class axis per position) is not supported yet; return [B, C]"
        )
    if len(shape) == 2 and shape[1] == 1:
        raise UnsupportedLayerError(
            f"the classifier returns shape {list(shape)}: one-output binary heads (sigmoid / one "
            "logit) are not supported yet; return two logits [B, 2]"
        )


def detect_head(pred: torch.Tensor, atol: float = 1e-3) -> Head:
    """``probs`` when every row ``[B, C]`` lies in [0, 1] and sums to 1, ``log_probs`` when
    every row is <= 0 and its ``exp`` sums to 1, else ``logits``."""
    rows = pred.reshape(pred.shape[0], -1).double()
    ones = torch.ones(rows.shape[0], dtype=rows.dtype)
    if not torch.isfinite(rows).all():
        return Head.LOGITS
    if rows.min() >= 0 and rows.max() <= 1 and torch.allclose(rows.sum(-1), ones, atol=atol):
        return Head.PROBS
    if rows.max() <= atol and torch.allclose(rows.exp().sum(-1), ones, atol=atol):
        return Head.LOG_PROBS
    return Head.LOGITS


def resolve_head(requested: str | None, form: OutputForm | None, task: Task) -> Head:
    """The head to export: ``requested`` if it agrees with the model's output, else the
    detected one (``requested`` None or ``auto``); a contradiction raises :class:`ConfigError`."""
    if requested not in (None, "auto"):
        try:
            req = Head(requested)
        except ValueError:
            valid = ", ".join(["auto", *(h.value for h in Head)])
            raise ConfigError(f"unknown head '{requested}'; valid heads: {valid}") from None
    else:
        req = None
    if task == Task.REGRESSION:
        if req not in (None, Head.LOGITS):
            raise ConfigError(f"head='{req.value}' applies to task='classification' only")
        return Head.LOGITS
    if form is None or form.prediction.numel() == 0:
        return req or Head.LOGITS
    found = detect_head(form.prediction)
    if req is not None and req != found:
        raise ConfigError(
            f"head='{req.value}' contradicts the model's output on the example input, which "
            f"looks like {found.value} (shape {list(form.shape)}); pass head='{found.value}' "
            "or leave head unset to use the detected form"
        )
    return found


class PairHead(nn.Module):
    """``net(x) -> (mean [B, D], log_var [B, D])`` as one tensor ``[B, 2D]`` (mean first)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, log_var = self.net(x)[:2]
        b = mean.shape[0]
        return torch.cat([mean.reshape(b, -1), log_var.reshape(b, -1)], dim=-1)
