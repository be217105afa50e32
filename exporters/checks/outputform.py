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
``[B, 2D]`` by :class:`PairHead`).

Layouts (:class:`HeadSpec`): a classifier's output per row is ``[C]``, or ``[C, *spatial]`` for
dense prediction (segmentation: the class axis is axis 1 of ``[B, C, *spatial]`` and the softmax
runs over it only, per position), or one column ``[1]`` / ``[]`` for a binary classifier (a
Bernoulli head: ``p = sigmoid(logit)``, or the probability itself, or ``exp`` of its log). A
Bernoulli head is reported as two classes ``[1 - p, p]`` so every downstream metric (ECE, NLL,
AUROC, argmax) works unchanged; its entropy and mutual information are the Bernoulli ones
(the two-class entropy of ``[1 - p, p]`` is ``H(p)``). K > 1 columns from a final sigmoid, or
``head='multilabel'``, are K independent labels (:mod:`.multilabel`), never a softmax.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from qbnn.runtimes.contract import Task
from qbnn.runtimes.errors import ConfigError, UnsupportedLayerError

from ..modules.heads import Head, HeadSpec
from ..modules.vectormodel import last_layer_body
from ..modules.wrapper import first_output
from .multilabel import multilabel_form

__all__ = [
    "OutputForm",
    "choose_output",
    "detect_head",
    "head_spec",
    "inspect_output",
    "last_layer_gap",
    "network_of",
    "resolve_head",
]


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
    end: str | None = None  # type name of the module whose output is the model's output

    @property
    def row_shape(self) -> tuple[int, ...]:
        """Per-row shape of the prediction; a ``[B]`` output is one column ``(1,)``."""
        return tuple(self.shape[1:]) or (1,)


def network_of(model: object) -> nn.Module | None:
    """The torch network whose forward defines the output form: the module itself, an
    ensemble's first member, or the ``.model`` of a posterior object (Laplace, SWAG, ...)."""
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, (list, tuple)) and model and isinstance(model[0], nn.Module):
        return model[0]
    net = getattr(model, "model", None)
    return net if isinstance(net, nn.Module) else None


class _EndOps(TorchFunctionMode):
    """Records which tensors come out of ``sigmoid`` / ``log_sigmoid`` (the function, the
    ``Tensor`` method or ``nn.Sigmoid``), followed through shape-only ops (reshape, view, ...),
    so a forward that ends in ``torch.sigmoid(z)`` is told apart from one returning logits."""

    def __init__(self) -> None:
        super().__init__()
        self.origin: dict[int, tuple[torch.Tensor, str]] = {}  # id -> (tensor kept alive, end)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        end = _FUNC_ENDS.get(name)
        if end is None and name in _SHAPE_OPS and args and isinstance(args[0], torch.Tensor):
            end = self.end_of(args[0])
        if end is not None and isinstance(out, torch.Tensor):
            self.origin[id(out)] = (out, end)
        return out

    def end_of(self, t: object) -> str | None:
        """``Sigmoid`` / ``LogSigmoid`` when ``t`` was computed by one of them, else None."""
        kept = self.origin.get(id(t))
        return kept[1] if kept is not None and kept[0] is t else None


_FUNC_ENDS = {"sigmoid": "Sigmoid", "log_sigmoid": "LogSigmoid", "logsigmoid": "LogSigmoid"}
_SHAPE_OPS = {"reshape", "view", "flatten", "squeeze", "unsqueeze", "contiguous", "clone"}


def _run_eval(net: nn.Module, x: torch.Tensor):
    """``net(x)`` once in eval mode under no_grad, restoring train flags and the global RNG.

    Returns ``(output, end)``: ``end`` is the type name of the innermost module that returned
    the output tensor itself (``Sigmoid``, ``Softmax``, ...), else ``Sigmoid`` / ``LogSigmoid``
    when forward computed it with ``torch.sigmoid`` / ``F.logsigmoid`` (possibly reshaped),
    None otherwise."""
    flags = [(m, m.training) for m in net.modules()]
    seen: list[tuple[object, str]] = []

    def hook(mod, _inp, out):
        seen.append((out, type(mod).__name__))

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    ops = _EndOps()
    try:
        with torch.no_grad(), torch.random.fork_rng(), ops:
            net.eval()
            out = net(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in flags:
            m.training = training
    pred = out[0] if isinstance(out, (tuple, list)) and out else out
    end = next((name for o, name in seen if o is pred), None)
    return out, ops.end_of(pred) or end


def inspect_output(net: nn.Module, x: torch.Tensor, task: Task) -> OutputForm:
    """Run ``net`` on ``x [B, *F]`` and classify its output; refuse forms qbnn cannot export.

    Raises :class:`UnsupportedLayerError` for tuples that are neither ``(prediction, KL
    scalar)`` nor ``(prediction, batch-shaped second head)``, a second head on a classifier and
    outputs whose first axis is not the batch.
    """
    try:
        out, end = _run_eval(net, x)
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
    if pred.dim() == 0 or pred.shape[0] != b:
        raise UnsupportedLayerError(
            f"the model maps an input of shape {list(x.shape)} to shape {list(pred.shape)}: qbnn "
            "needs the first axis of input and output to be the batch (one row per example); "
            "permute batch-second models (e.g. nn.LSTM without batch_first=True) in forward"
        )
    _check_rows_independent(net, x, pred)
    return OutputForm(tuple(pred.shape), pair, pred, end)


def _describe(items) -> str:
    return ", ".join(
        f"{k} {list(v.shape)}" if isinstance(v, torch.Tensor) else f"{k} ({type(v).__name__})"
        for k, v in items
    )


def choose_output(net: nn.Module, x: torch.Tensor, key: str | None) -> str | int | None:
    """Which element of ``net``'s output on ``x [B, *F]`` is the prediction: a dict's key, a
    tuple's index (``key`` a digit string), or None when the output needs no choosing (a
    tensor; a tuple without ``key``, read by :func:`inspect_output`). A dict without ``key``
    must hold exactly one batch-shaped tensor (``{"logits": [B, C]}``). Raises
    :class:`ConfigError` in one line listing the output's keys for a missing or unknown key."""
    try:
        out, _ = _run_eval(net, x)
    except Exception:  # the sampler probe reports a model that rejects the input
        return None
    b = x.shape[0]
    if isinstance(out, Mapping):
        items = list(out.items())
        keys = ", ".join(str(k) for k, _ in items)
        if key is not None:
            found = [k for k, _ in items if str(k) == key]
            if not found:
                raise ConfigError(
                    f"output_key '{key}' is not a key of the model's output dict; its keys: "
                    f"{keys}"
                )
            return found[0]
        batch = [k for k, v in items if isinstance(v, torch.Tensor) and v.dim() >= 1
                 and v.shape[0] == b]  # fmt: skip
        if len(batch) == 1:
            return batch[0]
        raise ConfigError(
            f"the model returns a dict with {len(batch)} batch-shaped tensors ({_describe(items)})"
            f"; pass output_key='<key>' naming the prediction (keys: {keys})"
        )
    if key is None:
        return None
    if isinstance(out, (tuple, list)):
        if not key.isdigit() or int(key) >= len(out):
            raise ConfigError(
                f"output_key '{key}' is not an index of the model's output tuple of "
                f"{len(out)} ({_describe(enumerate(out))}); pass output_key=0 .. {len(out) - 1}"
            )
        return int(key)
    raise ConfigError(
        f"output_key '{key}' was given but the model returns a {type(out).__name__}, not a "
        "dict or a tuple; leave output_key unset"
    )


def _first_tensor(out):
    return out[0] if isinstance(out, (tuple, list)) and out else out


def _check_rows_independent(net: nn.Module, x: torch.Tensor, pred: torch.Tensor) -> None:
    """Refuse a network whose output row ``i`` depends on other input rows (a time-major or
    batch-second model given ``[T, B, ...]``): with the rows of ``x`` reversed, a model that is
    deterministic in eval mode must return its rows reversed. Stochastic-in-eval models
    (Bayesian layers) and single-row inputs are not checked."""
    if x.shape[0] < 2 or not pred.is_floating_point():
        return
    with torch.random.fork_rng():
        torch.manual_seed(1)
        again = _first_tensor(_run_eval(net, x)[0])
        torch.manual_seed(1)
        flipped = _first_tensor(_run_eval(net, x.flip(0))[0])
    if not isinstance(flipped, torch.Tensor) or not torch.equal(again, pred):
        return  # draws noise in eval mode: row order changes the noise, not a batch problem
    gap = float((flipped.flip(0) - pred).abs().max()) if flipped.shape == pred.shape else 1.0
    if gap > 1e-4 * (1.0 + float(pred.abs().max())):
        raise UnsupportedLayerError(
            f"the model's output for one example depends on the other rows of the batch (with "
            f"the {x.shape[0]} input rows reversed its output rows change by up to {gap:.3g}): "
            "qbnn needs the first axis of input and output to be the batch (one row per "
            "example); permute batch-second models (e.g. nn.LSTM without batch_first=True) "
            "in forward"
        )


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
            "batch-shaped head is not supported; pass output_key='<index>' naming the "
            "prediction, or return the logits alone (or (logits, kl scalar))"
        )
    raise UnsupportedLayerError(
        f"the model returns a tuple of shapes {shapes}; qbnn exports (prediction, KL scalar) "
        "or, for regression, (mean [B, D], log_var [B, D])"
    )


_BINARY_ENDS = {"Sigmoid": Head.PROBS, "LogSigmoid": Head.LOG_PROBS}


def detect_head(pred: torch.Tensor, atol: float = 1e-3, end: str | None = None) -> Head:
    """The form of a classifier output ``pred [B, C, *spatial]`` (class axis 1).

    ``C > 1``: ``probs`` when every value lies in [0, 1] and sums to 1 over the class axis,
    ``log_probs`` when every value is <= 0 and its ``exp`` sums to 1, else ``logits``.
    One column (``[B]``, ``[B, 1, ...]``, a Bernoulli head): the module that produced the
    output decides when it is ``nn.Sigmoid`` (probs) or ``nn.LogSigmoid`` (log_probs); else
    values outside [0, 1] and not all <= 0 are logits, and values that fit two forms raise
    :class:`ConfigError` asking for ``head=``.
    """
    v = pred.double()
    if v.dim() == 1:
        v = v.unsqueeze(1)
    if not torch.isfinite(v).all():
        return Head.LOGITS
    if v.shape[1] == 1:
        if end in _BINARY_ENDS:
            return _BINARY_ENDS[end]
        in_unit = bool(v.min() >= 0 and v.max() <= 1)
        non_pos = bool(v.max() <= 0)
        if not in_unit and not non_pos:
            return Head.LOGITS
        other = "probs (a sigmoid probability)" if in_unit else "log_probs (a log-sigmoid)"
        span, alt = ("[0, 1]", "probs") if in_unit else ("(-inf, 0]", "log_probs")
        raise ConfigError(
            f"the binary classifier's one output per row lies in {span} on the example input, "
            f"so it could be logits or {other}; pass head='logits' or head='{alt}' (--head) to "
            "say which"
        )
    ones = torch.ones_like(v.sum(1))
    if v.min() >= 0 and v.max() <= 1 and torch.allclose(v.sum(1), ones, atol=atol):
        return Head.PROBS
    if v.max() <= atol and torch.allclose(v.exp().sum(1), ones, atol=atol):
        return Head.LOG_PROBS
    return Head.LOGITS


def _fits(pred: torch.Tensor, head: Head) -> bool:
    """Whether a one-column output can be ``head`` (probabilities in [0, 1], log <= 0)."""
    if head == Head.PROBS:
        return bool(pred.min() >= 0 and pred.max() <= 1)
    if head == Head.LOG_PROBS:
        return bool(pred.max() <= 0)
    return True


def head_spec(head: Head, form: OutputForm | None, task: Task) -> HeadSpec:
    """The head with its layout: per-row shape ``(C,)``, ``(C, *spatial)`` or ``(1,)``."""
    if task != Task.CLASSIFICATION or form is None or form.prediction.numel() == 0:
        return HeadSpec(head)
    return HeadSpec(head, form.row_shape)


def resolve_head(requested: str | None, form: OutputForm | None, task: Task) -> Head:
    """The head to export: ``requested`` if it agrees with the model's output, else the
    detected one (``requested`` None or ``auto``); a contradiction raises :class:`ConfigError`.
    Multi-label heads follow :func:`qbnn.exporters.checks.multilabel.multilabel_form`."""
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
    pred = form.prediction
    multi = multilabel_form(req, pred, form.end, form.row_shape)
    if multi is not None:
        return multi  # K independent labels (checks/multilabel.py)
    if form.row_shape[0] == 1 and req is not None and _fits(pred, req):
        return req  # a Bernoulli head the user named and the values allow
    if form.row_shape[0] == 1 and req is not None:
        raise ConfigError(
            f"head='{req.value}' contradicts the binary classifier's output on the example input "
            f"(values in [{float(pred.min()):.3g}, {float(pred.max()):.3g}]); use head='logits'"
        )
    found = detect_head(pred, end=form.end)
    if req is not None and req != found:
        raise ConfigError(
            f"head='{req.value}' contradicts the model's output on the example input, which "
            f"looks like {found.value} (shape {list(form.shape)}); pass head='{found.value}' "
            "or leave head unset to use the detected form"
        )
    return found


def last_layer_gap(model: nn.Module, last_layer: str, x: torch.Tensor) -> float:
    """Max |model(x) - last_layer(body(x))| relative to the largest |last_layer(body(x))| on
    ``x [B, *F]``: 0 when the last Linear's output *is* the model's output, > 0 when forward
    applies ops after it (which a last-layer graph would drop). Eval mode, current weights."""
    head = model.get_submodule(last_layer)
    body = last_layer_body(model, last_layer)
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        full = first_output(net(x)).reshape(x.shape[0], -1)
        feats = first_output(body(x)).reshape(x.shape[0], head.in_features)
        recon = head(feats).reshape(x.shape[0], -1)
    if full.shape != recon.shape:
        return float("inf")
    return float((full - recon).abs().max() / (recon.abs().max() + 1e-6))
