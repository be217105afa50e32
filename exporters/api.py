"""``export()``: a trained torch BNN becomes a self-contained stochastic ONNX graph."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from qbnn.runtimes.atomic import atomic_path
from qbnn.runtimes.contract import (
    CLASSIFICATION_OUTPUTS,
    FORMAT_VERSION,
    HETEROSCEDASTIC_OUTPUTS,
    INPUT,
    REGRESSION_OUTPUTS,
    MetaKey,
    Task,
)
from qbnn.runtimes.errors import ConfigError, ExportError, UnsupportedLayerError, first_line
from qbnn.runtimes.seeding import random_nodes

from . import families  # noqa: F401  (imports every family: the registry is complete)
from .checks.bnstats import apply_bn_policy
from .checks.noisecensus import check_traceable_noise, draws_own_noise, noise_census, shared_noise
from .checks.outputform import head_spec, inspect_output, network_of, resolve_head
from .checks.selfcheck import FidelityReport, verify_export
from .families.gaussian import WeightGaussian, last_layer_gap
from .modules.btlayers import FLIPOUT_TYPES, REPARAM_TYPES, check_supported
from .modules.heads import HEAD_KEY, OUTPUT_SHAPE_KEY, Head, HeadSpec, PairHead
from .modules.vectormodel import LastLayerModel
from .passes import SPLIT_PASSES, run_passes
from .passes.finalize import finalize
from .passes.hoist import hoist_scan_noise
from .passes.randomops import check_random_ops, own_random_ops
from .quiet import quiet_export
from .registry import BuiltModel, get_exporter, known_families, task_of

__all__ = ["ExportResult", "export", "export_model", "resolve_family"]

_TEMPLATE = "qbnn_sample_template"
QBNN_VERSION = "0.1.0"
log = logging.getLogger("qbnn.export")


@dataclass(frozen=True)
class ExportResult:
    """Where the graph went and what the self-check measured (None with ``verify=False``)."""

    path: Path
    family: str
    sampling: str
    fidelity: FidelityReport | None
    notes: tuple[str, ...]


def resolve_family(model: object, posterior: str, example_input: torch.Tensor | None = None) -> str:
    """``posterior`` itself, or for ``auto`` the first registered family that detects ``model``;
    with ``example_input`` a forward that draws its own noise (beyond dropout) is ``stochastic``."""
    if posterior != "auto":
        return get_exporter(posterior).family
    for order in ("laplace", "swag", "gaussian", "ensemble", "flipout", "meanfield", "mcdropout"):
        own_noise = order == "mcdropout" and example_input is not None
        if own_noise and draws_own_noise(model, example_input):
            return "stochastic"
        if known_families()[order].detect(model):
            return order
    if isinstance(model, nn.Module):
        check_supported(model, REPARAM_TYPES + FLIPOUT_TYPES, "auto")
    desc = "; ".join(f"{e.family}: {e.description}" for e in known_families().values())
    raise ExportError(
        f"no stochastic layer found in {type(model).__name__}; supported posteriors: {desc}. "
        "For dropout written inline (F.dropout), pass posterior='mcdropout'; for a forward "
        "that draws its own noise (torch.randn_like), posterior='stochastic'"
    )


def _check_noise(model, family: str, x: torch.Tensor) -> None:
    """``mcdropout`` runs forward once over the tiled batch ``[S * B]``: noise that does not
    follow the batch (shaped like a weight) would be one draw shared by all S samples.
    ``stochastic`` traces forward: in-place draws into module state are refused by name."""
    if family not in ("mcdropout", "stochastic") or not isinstance(model, nn.Module):
        return
    draws = noise_census(model, x)
    if family == "stochastic":
        check_traceable_noise(model, draws)
        return
    shared = shared_noise(draws)
    if shared:
        d = shared[0]
        raise UnsupportedLayerError(
            f"{d.where()} draws noise of shape {list(d.shape)} ({d.op}) that does not follow "
            "the batch (shaped like a weight): posterior 'mcdropout' runs forward once for all "
            "S samples, so every sample would share that draw; use posterior='stochastic' "
            "(one forward per MC sample)"
        )


def export(
    model: nn.Module | list[nn.Module],
    example_input: torch.Tensor,
    path: str | os.PathLike,
    *,
    posterior: str = "auto",
    sampling: str | None = None,
    num_samples: int = 16,
    task: str = "classification",
    seed: int | None = None,
    verify: bool = True,
    verify_samples: int = 64,
    opset: int = 18,
    source: str | None = None,
    heteroscedastic: bool = False,
    noise_variance: float | None = None,
    head: str | None = None,
    bn_update: torch.Tensor | None = None,
) -> Path:
    """Compile ``model`` to an ONNX graph obeying the qbnn contract; returns the written path.

    ``model``: a torch module (Bayesian-Torch layers, dropout) or a list of same-architecture
    modules (ensemble). ``example_input``: ``[B, *feature_shape]``, float (exported as float32)
    or integer token ids (int64 / int32, kept: the graph's ``input`` has that dtype). The graph
    takes ``input [B', *feature_shape]`` (any B') and an optional int64 scalar ``num_samples``
    (default ``num_samples``) and returns ``probs [S, B', C]``, ``mean_probs [B', C]``,
    ``predictive_entropy``, ``expected_entropy``, ``mutual_information`` ``[B']``
    (regression: ``mean [S, B', D]``, ``pred_mean``, ``pred_variance [B', D]``).
    ``seed`` fixes every random node's seed (identical outputs across processes); without it
    each session draws fresh noise. ``model`` may also be a fitted laplace-torch object, a
    :class:`~qbnn.exporters.swag.SwagPosterior`, :class:`~qbnn.exporters.ensemble.WeightSamples`
    (SG-MCMC draws) or a :class:`~qbnn.exporters.weightgaussian.WeightGaussian`. ``head``:
    what a classifier's forward returns (``logits``, ``probs``, ``log_probs``; None detects it
    from the output on ``example_input``; one-column outputs are Bernoulli heads, ``[B, C,
    *spatial]`` dense heads). Exact posteriors (ensembles, weight samples, ``frozen:K``) give
    summaries uniform over their K members for any ``num_samples``. ``bn_update``: training
    inputs (tensor or batches) to recompute BatchNorm statistics per ``frozen:K`` draw of a
    whole-network posterior (see :mod:`qbnn.exporters.bnstats`). See :func:`export_model` for
    the full result and the regression options.
    """
    return export_model(
        model,
        example_input,
        path,
        posterior=posterior,
        sampling=sampling,
        num_samples=num_samples,
        task=task,
        seed=seed,
        verify=verify,
        verify_samples=verify_samples,
        opset=opset,
        source=source,
        heteroscedastic=heteroscedastic,
        noise_variance=noise_variance,
        head=head,
        bn_update=bn_update,
    ).path


def _check_args(example_input, path: Path, num_samples: int, verify_samples: int) -> None:
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        shape = getattr(example_input, "shape", type(example_input).__name__)
        raise ConfigError(
            "example_input must be a tensor [B, *feature_shape] with B >= 1 (float, or int64 "
            f"token ids); got {shape}"
        )
    if not path.parent.is_dir():
        raise ConfigError(f"output directory {path.parent} does not exist")
    if num_samples < 1 or verify_samples < 2:
        raise ConfigError(
            f"num_samples must be >= 1 and verify_samples >= 2; got {num_samples}, {verify_samples}"
        )


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


def _noise_variance(model, family: str, task: Task, hetero: bool, value: float | None) -> float:
    """The observation-noise variance a homoscedastic regression head adds (0 for none)."""
    if value is None and family == "laplace" and task == Task.REGRESSION:
        sigma = torch.as_tensor(model.sigma_noise).detach().reshape(-1)
        if sigma.numel() != 1:
            raise ConfigError(
                f"the Laplace object has a per-output sigma_noise ({sigma.numel()} values); qbnn "
                "graphs add one observation-noise variance: pass noise_variance explicitly"
            )
        value = float(sigma[0]) ** 2
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


def _trace(
    built: BuiltModel, x: torch.Tensor, task: Task, opset: int, heteroscedastic: bool = False
) -> onnx.ModelProto:
    xb = x if x.shape[0] > 1 else x.expand(2, *x.shape[1:]).contiguous()
    template = torch.zeros(2)
    dims = {"x": {0: torch.export.Dim("batch")}, "template": {0: torch.export.Dim("samples")}}
    outputs = REGRESSION_OUTPUTS if task == Task.REGRESSION else CLASSIFICATION_OUTPUTS
    if heteroscedastic:
        outputs = HETEROSCEDASTIC_OUTPUTS
    try:
        with quiet_export():
            prog = torch.onnx.export(
                built.module,
                (xb, template),
                dynamo=True,
                dynamic_shapes=dims,
                input_names=[INPUT, _TEMPLATE],
                output_names=list(outputs),
                opset_version=opset,
                verbose=False,
            )
    except Exception as exc:
        loop = _loop_trace_error(exc)
        if loop is not None:
            raise ExportError(
                "the network's forward could not be traced inside the sample loop (one network "
                f"pass per MC sample, traced like torch.compile): {loop}. Python/numpy "
                "randomness and data-dependent Python control flow cannot become graph ops; "
                "make forward tensor-only, or use another sampling mode (lrt, frozen:K)"
            ) from exc
        msg = first_line(exc)
        raise ExportError(f"torch.onnx.export failed: {msg}") from exc
    return prog.model_proto


def _loop_trace_error(exc: BaseException) -> str | None:
    """The reason torch could not capture the sample loop's body, or None for other errors."""
    cause: BaseException | None = exc
    while cause is not None:
        if type(cause).__name__ == "UncapturedHigherOrderOpError":
            lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
            reason = lines[1] if len(lines) > 1 else lines[0] if lines else "unknown reason"
            return reason.rstrip(".")
        cause = cause.__cause__ or cause.__context__
    return None


def _source(family: str) -> str:
    libs = {"meanfield": "bayesian-torch", "flipout": "bayesian-torch", "laplace": "laplace-torch"}
    if family in libs:
        from importlib.metadata import version

        return f"{libs[family]} {version(libs[family])}; torch {torch.__version__}"
    return f"torch {torch.__version__}"


def export_model(
    model,
    example_input,
    path,
    *,
    posterior="auto",
    sampling=None,
    num_samples=16,
    task="classification",
    seed=None,
    verify=True,
    verify_samples=64,
    opset=18,
    source=None,
    heteroscedastic=False,
    noise_variance=None,
    head=None,
    bn_update=None,
) -> ExportResult:
    """Like :func:`export` but returns an :class:`ExportResult` with the self-check numbers.

    ``heteroscedastic=True`` (regression only): the network outputs ``[B, 2D]`` = mean and
    log-variance; the graph adds ``variance [S, B, D]`` and ``pred_variance`` becomes the law of
    total variance ``E[variance] + Var[mean]``. ``noise_variance`` (homoscedastic regression
    only): a fixed observation-noise variance added to ``pred_variance``; a regression Laplace
    object supplies ``sigma_noise**2`` by default.

    The model's output on ``example_input`` is inspected first (:mod:`qbnn.exporters.heads`):
    ``head=None`` detects logits / probabilities / log-probabilities, a ``head`` that
    contradicts the output raises :class:`ConfigError`; a regression tuple
    ``(mean [B, D], log_var [B, D])`` is a heteroscedastic head; other tuples, dense
    ``[B, C, *spatial]`` and one-column classifiers are refused by name.
    """
    path = Path(path)
    _check_args(example_input, path, num_samples, verify_samples)
    task_e = task_of(task)
    x = _as_input(example_input)
    family = resolve_family(model, posterior, x)
    _check_noise(model, family, x)
    exporter = get_exporter(family)
    mode = exporter.parse_mode(sampling, num_samples)
    net = network_of(model)
    refusal: UnsupportedLayerError | None = None
    try:
        form = inspect_output(net, x, task_e) if net is not None else None
    except UnsupportedLayerError as exc:  # raised after the posterior's own checks below
        form, refusal = None, exc
    head_e = head_spec(resolve_head(head, form, task_e), form, task_e)
    if form is not None and form.pair:
        heteroscedastic = True
        model = _pair_model(model, family)
    if heteroscedastic and family == "laplace":
        raise ConfigError(
            "laplace-torch fits a homoscedastic Gaussian likelihood, so a Laplace posterior has no "
            "heteroscedastic head; its sigma_noise**2 becomes the graph's noise_variance"
        )
    built = exporter.build(model, mode, task=task_e, seed=seed)
    _set_head(built, head_e)
    _check_last_layer(model, family, built, x)
    apply_bn_policy(model, family, mode, exporter, built, x, bn_update, task_e, head_e)
    if refusal is not None and "first axis" in str(refusal):
        raise refusal  # the batch axis: before the probe, whose message would mislead
    ref = _probe(built, x)
    out_dim = _heteroscedastic(built, ref, task_e, heteroscedastic)
    if head_e.shape:  # classes on axis 1 of [B, C, *spatial]; a Bernoulli head has 2
        out_dim = 2 if head_e.binary else head_e.shape[0]
    noise_var = _noise_variance(model, family, task_e, heteroscedastic, noise_variance)
    if refusal is not None:
        raise refusal
    built.module.noise_variance = noise_var
    proto = _trace(built, x, task_e, opset, heteroscedastic)
    built.notes.extend(own_random_ops(proto))  # the user's own random ops become qbnn's
    hoist_scan_noise(proto)  # noise of the sample loop's body drawn for all samples at once
    meta = {
        MetaKey.FORMAT_VERSION: FORMAT_VERSION,
        MetaKey.TASK: task_e.value,
        MetaKey.POSTERIOR: family,
        MetaKey.SAMPLING: str(mode),
        MetaKey.DEFAULT_SAMPLES: str(num_samples),
        MetaKey.PRECISION: "fp32",
        MetaKey.SOURCE: source or _source(family),
        MetaKey.VERSION: QBNN_VERSION,
        MetaKey.INPUT_SHAPE: ",".join(map(str, x.shape[1:])),
        MetaKey.SEED: "" if seed is None else str(seed),
        (MetaKey.NUM_CLASSES if task_e == Task.CLASSIFICATION else "qbnn.output_dim"): str(out_dim),
        MetaKey.HETEROSCEDASTIC: "1" if heteroscedastic else "0",
    }
    if task_e == Task.CLASSIFICATION:
        meta[HEAD_KEY] = head_e.value
        meta[OUTPUT_SHAPE_KEY] = ",".join(map(str, head_e.shape or (out_dim,)))
    if noise_var:
        meta[MetaKey.NOISE_VARIANCE] = repr(noise_var)
    finalize(proto, _TEMPLATE, num_samples, seed, {str(k): v for k, v in meta.items()})
    split = run_passes(proto, SPLIT_PASSES)  # deterministic prefix computed once (issue 21)
    proto = split.model
    built.notes.extend(split.notes)
    check_random_ops(proto)
    if not built.exact and not random_nodes(proto):
        raise ExportError(
            f"the '{family}' export produced no random op: no stochastic layer was reached in "
            "forward (is dropout p > 0 and called in forward?)"
        )
    return _write(proto, path, built, x, task_e, verify, verify_samples, family, mode, head_e)


def _pair_model(model, family: str):
    """The user's ``(mean, log_var)`` network as one ``[B, 2D]`` output (a heteroscedastic head)."""
    if family == "laplace":
        return model  # refused next with the Laplace reason
    if isinstance(model, nn.Module):
        return PairHead(model)
    if isinstance(model, (list, tuple)) and all(isinstance(m, nn.Module) for m in model):
        return [PairHead(m) for m in model]
    raise ConfigError(
        f"the model returns a (mean, log_var) tuple; the '{family}' posterior object cannot be "
        "wrapped: return one tensor [B, 2D] (mean, log-variance) and pass heteroscedastic=True"
    )


def _set_head(built: BuiltModel, head: HeadSpec) -> None:
    """Record the head on the export module; last-layer posteriors keep logits only."""
    if head.form != Head.LOGITS and isinstance(built.module, LastLayerModel):
        raise ConfigError(
            f"the model outputs {head.value}, but a last-layer posterior replaces the last Linear "
            "and drops every op after it (softmax / log_softmax); not supported yet: fit the "
            "posterior on a network that ends in the last Linear (logits)"
        )
    built.module.head = head


def _check_last_layer(model, family: str, built: BuiltModel, x: torch.Tensor) -> None:
    """A last-layer graph samples the last Linear's output: refuse a forward that changes it."""
    if not isinstance(built.module, LastLayerModel):
        return
    if family == "laplace":  # laplace-torch's FeatureExtractor around the user's model
        net, name = model.model.model, model.model._last_layer_name
    elif isinstance(model, WeightGaussian):
        net, name = model.model, model.last_layer
    else:
        return
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


def _write(
    proto, path, built, x, task_e, verify, verify_samples, family, mode, head=HeadSpec()
) -> ExportResult:
    fidelity = None
    with atomic_path(path) as tmp:
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(tmp))
        if verify:
            fidelity = verify_export(tmp, built, x, task_e, head=head, samples=verify_samples)
            for w in fidelity.warnings:
                log.warning(w)
    return ExportResult(path, family, str(mode), fidelity, tuple(built.notes))
