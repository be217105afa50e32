"""The steps of an export, in the order :func:`qbnn.exporters.api.export_model` runs them.

:func:`prepare` checks the arguments, resolves the posterior family, inspects the model's
output, builds the export module and probes it; :func:`trace` runs ``torch.onnx.export``;
:func:`require_random_ops` and :func:`write` finish. Everything family-specific comes from the
family's registry entry (:class:`~qbnn.exporters.registry.Exporter`): no family is named here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from qbnn.runtimes.atomic import atomic_path
from qbnn.runtimes.contract import (
    CLASSIFICATION_OUTPUTS,
    HETEROSCEDASTIC_OUTPUTS,
    INPUT,
    MULTILABEL_OUTPUTS,
    REGRESSION_OUTPUTS,
    Task,
)
from qbnn.runtimes.errors import ConfigError, ExportError, UnsupportedLayerError, first_line
from qbnn.runtimes.seeding import random_nodes

from . import families  # noqa: F401  (imports every family: the registry is complete)
from .checks.batchaxis import check_batch_axis
from .checks.bnstats import apply_bn_policy
from .checks.dtypes import float32_model
from .checks.outputform import (
    choose_output,
    head_spec,
    inspect_output,
    last_layer_gap,
    network_of,
    resolve_head,
)
from .checks.selfcheck import FidelityReport, verify_export
from .checks.sideeffects import detached_copy
from .config import ExportConfig
from .modules.heads import Head, HeadSpec, OutputKey, PairHead
from .modules.vectormodel import LastLayerModel
from .quiet import quiet_export
from .registry import (
    BuiltModel,
    Exporter,
    SamplingMode,
    detection_order,
    get_exporter,
    known_families,
)
from .tracecause import trace_cause

__all__ = [
    "TEMPLATE",
    "ExportResult",
    "Prepared",
    "prepare",
    "require_random_ops",
    "resolve_family",
    "trace",
    "write",
]

#: the traced sample-template input ``[S]`` that becomes the ``num_samples`` input
TEMPLATE = "qbnn_sample_template"
log = logging.getLogger("qbnn.export")


@dataclass(frozen=True)
class ExportResult:
    """Where the graph went and what the self-check measured (None with ``verify=False``)."""

    path: Path
    family: str
    sampling: str
    fidelity: FidelityReport | None
    notes: tuple[str, ...]


@dataclass
class Prepared:
    """An export module ready to trace: the family and its mode, the built module, the example
    input ``x [B, *F]`` as the graph takes it, the task and head, whether the head is
    heteroscedastic, the output dimension (D, or C for classifiers) and the observation-noise
    variance of a regression head (0 for none)."""

    family: str
    exporter: Exporter
    mode: SamplingMode
    built: BuiltModel
    x: torch.Tensor
    task: Task
    head: HeadSpec
    heteroscedastic: bool
    out_dim: int
    noise_variance: float


def resolve_family(model: object, posterior: str, example_input: torch.Tensor | None = None) -> str:
    """``posterior`` itself, or for ``auto`` the first registered family (in detection
    priority) that detects ``model``; families that need the example input (a forward that
    draws its own noise) are tried only with ``example_input``. Raises :class:`ConfigError` for
    an unknown family, :class:`ExportError` when ``auto`` finds none."""
    if posterior != "auto":
        return get_exporter(posterior).family
    for e in detection_order():
        if e.detect_input is not None and example_input is not None:
            if e.detect_input(model, example_input):
                return e.family
        elif e.detect(model):
            return e.family
    for e in detection_order():
        if e.undetected is not None:
            e.undetected(model)
    desc = "; ".join(f"{e.family}: {e.description}" for e in known_families().values())
    hints = "; ".join(e.auto_hint for e in detection_order() if e.auto_hint)
    raise ExportError(
        f"no stochastic layer found in {type(model).__name__}; supported posteriors: {desc}. "
        + hints[:1].upper()
        + hints[1:]
    )


def _check_input(example_input, path: Path) -> None:
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        shape = getattr(example_input, "shape", type(example_input).__name__)
        raise ConfigError(
            "example_input must be a tensor [B, *feature_shape] with B >= 1 (float, or int64 "
            f"token ids); got {shape}"
        )
    if not path.parent.is_dir():
        raise ConfigError(f"output directory {path.parent} does not exist")


def prepare(
    model: object,
    example_input: torch.Tensor,
    path: Path,
    cfg: ExportConfig,
    bn_update: torch.Tensor | None = None,
) -> Prepared:
    """Everything before tracing; raises the export's configuration and model errors."""
    _check_input(example_input, path)
    task = cfg.task
    x = _as_input(example_input)
    model = detached_copy(model)  # a trained layer's leftover autograd history blocks copies
    model, dtype_note = float32_model(model, network_of(model))
    if dtype_note is not None:
        log.warning(dtype_note)
    model = _keyed_model(model, x, cfg.output_key)
    family = resolve_family(model, cfg.posterior, x)
    exporter = get_exporter(family)
    if exporter.check is not None:
        exporter.check(model, x)
    mode = exporter.parse_mode(cfg.sampling, cfg.num_samples, model)
    if exporter.resolve_mode is not None:
        mode = exporter.resolve_mode(model, x, mode)
    net = exporter.view(model, x, mode) if exporter.view is not None else network_of(model)
    refusal: UnsupportedLayerError | None = None
    try:
        form = inspect_output(net, x, task) if net is not None else None
    except UnsupportedLayerError as exc:  # raised after the posterior's own checks below
        form, refusal = None, exc
    head = head_spec(resolve_head(cfg.head, form, task), form, task)
    hetero = cfg.heteroscedastic
    if form is not None and form.pair:
        hetero = True
        if exporter.heteroscedastic is None:
            model = _pair_model(model, family)
    if hetero and exporter.heteroscedastic is not None:
        raise ConfigError(exporter.heteroscedastic)
    example = {"example": x} if exporter.build_takes_input else {}
    built = exporter.build(model, mode, task=task, seed=cfg.seed, **example)
    if dtype_note is not None:
        built.notes.append(f"warning: {dtype_note}")
    _set_head(built, head)
    _check_last_layer(model, exporter, built, x)
    apply_bn_policy(model, family, mode, exporter, built, x, bn_update, task, head)
    if refusal is not None and ("first axis" in str(refusal) or "model returns" in str(refusal)):
        raise refusal  # batch axis, output type: before the probe, whose message would mislead
    ref = _probe(built, x)
    out_dim = _heteroscedastic(built, ref, task, hetero)
    if head.shape:  # classes on axis 1 of [B, C, *spatial]; a Bernoulli head has 2
        out_dim = 2 if head.binary else head.shape[0]
    noise_var = _noise_variance(model, exporter, task, hetero, cfg.noise_variance)
    if refusal is not None:
        raise refusal
    built.module.noise_variance = noise_var
    return Prepared(family, exporter, mode, built, x, task, head, hetero, out_dim, noise_var)


def _probe(built: BuiltModel, x: torch.Tensor) -> torch.Tensor:
    """One torch reference draw; a model that rejects the input shape fails here."""
    try:
        return built.reference(x, 1, torch.Generator().manual_seed(0))
    except Exception as exc:  # the user's model raised: report it as a shape problem
        first = first_line(exc)
        raise ExportError(f"the model rejected an input of shape {list(x.shape)}: {first}") from exc


def _heteroscedastic(built: BuiltModel, ref: torch.Tensor, task: Task, on: bool) -> int:
    """Switch the wrapper's head; returns the output dimension D (C for classifiers)."""
    if not on:
        return int(ref.shape[-1])
    if task != Task.REGRESSION or ref.shape[-1] % 2:
        raise ConfigError(
            f"heteroscedastic=True needs task='regression' and an even output size [B, 2D] "
            f"(mean, log-variance); got task '{task.value}' and output size {ref.shape[-1]}"
        )
    built.module.heteroscedastic = True
    return int(ref.shape[-1]) // 2


def _noise_variance(
    model: object, exporter: Exporter, task: Task, hetero: bool, value: float | None
) -> float:
    """The observation-noise variance a homoscedastic regression head adds (0 for none)."""
    if value is None and exporter.noise_variance is not None and task == Task.REGRESSION:
        value = exporter.noise_variance(model)
    if value is None or value == 0:
        return 0.0
    if task != Task.REGRESSION or hetero:
        raise ConfigError(
            "noise_variance applies to homoscedastic regression only (task='regression', "
            f"heteroscedastic=False); got task '{task.value}', heteroscedastic={hetero}"
        )
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"noise_variance must be a finite number > 0; got {value}")
    return float(value)


def trace(p: Prepared, opset: int) -> onnx.ModelProto:
    """``torch.onnx.export`` (dynamo) of the export module on ``p.x`` (a batch of one is
    tiled to two so the batch axis stays dynamic) and a sample template of length 2 (or the
    module's ``trace_samples``); raises :class:`ExportError`."""
    built, x, task, exporter, mode = p.built, p.x, p.task, p.exporter, p.mode
    xb = x if x.shape[0] > 1 else x.expand(2, *x.shape[1:]).contiguous()
    template = torch.zeros(getattr(built.module, "trace_samples", 2))  # S while traced
    dims = {"x": {0: torch.export.Dim("batch")}, "template": {0: torch.export.Dim("samples")}}
    outputs = REGRESSION_OUTPUTS if task == Task.REGRESSION else CLASSIFICATION_OUTPUTS
    if p.heteroscedastic:
        outputs = HETEROSCEDASTIC_OUTPUTS
    if p.head.multilabel:
        outputs = MULTILABEL_OUTPUTS
    try:
        with quiet_export():
            prog = torch.onnx.export(
                built.module,
                (xb, template),
                dynamo=True,
                dynamic_shapes=dims,
                input_names=[INPUT, TEMPLATE],
                output_names=list(outputs),
                opset_version=opset,
                verbose=False,
            )
    except Exception as exc:
        raise _trace_error(exc, exporter, mode) from exc
    return prog.model_proto


def _trace_error(exc: BaseException, exporter: Exporter, mode: SamplingMode) -> ExportError:
    """torch's own reason and where (not torch.onnx's banner), with advice naming only the
    sampling modes the family has."""
    cause = trace_cause(exc)
    others = [m for m in exporter.mode_names() if m.split(":")[0].rstrip("[") != mode.name]
    alt = (
        f"or use another sampling mode of the '{exporter.family}' family ({', '.join(others)})"
        if others
        else f"(the '{exporter.family}' family has no other sampling mode)"
    )
    where = "torch.export could not trace the model"
    if _in_sample_loop(exc):
        where = (
            "the network's forward could not be traced inside the sample loop (one network "
            "pass per MC sample, traced like torch.compile)"
        )
    return ExportError(
        f"{where}: {cause}. Python/numpy randomness and data-dependent Python control flow "
        f"cannot become graph ops: make forward tensor-only {alt}"
    )


def _in_sample_loop(exc: BaseException) -> bool:
    """Whether torch failed to capture the sample loop's body (a Scan)."""
    cause: BaseException | None = exc
    while cause is not None:
        if type(cause).__name__ == "UncapturedHigherOrderOpError":
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _keyed_model(model, x: torch.Tensor, key: str | None):
    """The model with its dict / tuple output reduced to the prediction (``output_key``, or a
    dict's one batch-shaped tensor), see :func:`~.checks.outputform.choose_output`."""
    net = network_of(model)
    if net is None:
        return model
    chosen = choose_output(net, x, key)
    if chosen is None:
        return model
    if isinstance(model, nn.Module):
        return OutputKey(model, chosen)
    if isinstance(model, (list, tuple)) and all(isinstance(m, nn.Module) for m in model):
        return [OutputKey(m, chosen) for m in model]
    raise ConfigError(
        f"the posterior's network returns a {type(model).__name__} output read by key "
        f"'{chosen}'; a posterior object cannot be wrapped: make its network return the "
        "prediction tensor [B, C]"
    )


def _pair_model(model, family: str):
    """The user's ``(mean, log_var)`` network as one ``[B, 2D]`` output (a heteroscedastic head)."""
    if isinstance(model, nn.Module):
        return PairHead(model)
    if isinstance(model, (list, tuple)) and all(isinstance(m, nn.Module) for m in model):
        return [PairHead(m) for m in model]
    raise ConfigError(
        f"the model returns a (mean, log_var) tuple; the '{family}' posterior object cannot be "
        "wrapped: return one tensor [B, 2D] (mean, log-variance) and pass heteroscedastic=True"
    )


def _set_head(built: BuiltModel, head: HeadSpec) -> None:
    """Record the head on the export module; last-layer posteriors keep logits only and a
    trainer's fixed categorical predictive (``reference_head``) refuses a multi-label head."""
    if head.multilabel and built.reference_head is not None:
        raise ConfigError(
            f"the model is a multi-label head (K independent labels), but this posterior's own "
            f"predictive is a softmax over classes ({built.reference_head}); multi-label is not "
            "supported for it: use MC dropout, an ensemble or a Bayesian-layer network"
        )
    if head.form not in (Head.LOGITS, Head.MULTILABEL) and isinstance(built.module, LastLayerModel):
        raise ConfigError(
            f"the model outputs {head.value}, but a last-layer posterior replaces the last Linear "
            "and drops every op after it (softmax / log_softmax); not supported yet: fit the "
            "posterior on a network that ends in the last Linear (logits)"
        )
    built.module.head = head


def _check_last_layer(model, exporter: Exporter, built: BuiltModel, x: torch.Tensor) -> None:
    """A last-layer graph samples the last Linear's output: refuse a forward that changes it."""
    if not isinstance(built.module, LastLayerModel) or exporter.last_layer is None:
        return
    found = exporter.last_layer(model)
    if found is None:
        return
    net, name = found
    gap = last_layer_gap(net, name, x)
    if gap > 1e-4:
        raise ConfigError(
            f"the model's output is not the output of its last layer '{name}' (relative "
            f"difference {gap:.3g} on the example input: an op after it, such as log_softmax, a "
            "temperature or a reshape); a last-layer posterior samples that Linear and would drop "
            "the op: end forward at the last Linear"
        )


def _as_input(example_input: torch.Tensor) -> torch.Tensor:
    """The example input as the graph will take it: floating point as float32, integer ids
    (token ids for an embedding) and booleans keep their dtype (int64 / int32 / bool)."""
    x = example_input.detach()
    return x if x.dtype in (torch.int64, torch.int32, torch.bool) else x.float()


def require_random_ops(proto: onnx.ModelProto, p: Prepared) -> None:
    """A sampled (not exact) export must hold a random op; raises :class:`ExportError`."""
    if not p.built.exact and not random_nodes(proto):
        raise ExportError(
            f"the '{p.family}' export produced no random op: no stochastic layer was reached in "
            "forward (is dropout p > 0 and called in forward?)"
        )


def write(proto: onnx.ModelProto, path: Path, p: Prepared, cfg: ExportConfig) -> ExportResult:
    """Check ``proto`` (ONNX checker, a free batch axis: :func:`check_batch_axis`), save it
    atomically at ``path``, then self-check it (``cfg.verify``)."""
    fidelity = None
    with atomic_path(path) as tmp:
        onnx.checker.check_model(proto)
        check_batch_axis(proto, p.x)
        onnx.save_model(proto, str(tmp))
        if cfg.verify:
            fidelity = verify_export(
                tmp, p.built, p.x, p.task, head=p.head, samples=cfg.verify_samples
            )
            for w in fidelity.warnings:
                log.warning(w)
    return ExportResult(path, p.family, str(p.mode), fidelity, tuple(p.built.notes))
