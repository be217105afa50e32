"""``export()``: a trained torch BNN becomes a self-contained stochastic ONNX graph.

The driver: options become an :class:`~qbnn.exporters.config.ExportConfig`, the module is
prepared and traced (:mod:`qbnn.exporters.steps`), the graph passes run in their declared order
(:func:`qbnn.exporters.passes.order.export_passes`) and the graph is written and self-checked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from qbnn.runtimes.contract import FORMAT_VERSION, ContractMeta, Task

from .config import ExportConfig
from .passes import run_passes
from .passes.order import export_passes
from .registry import get_exporter
from .steps import (
    TEMPLATE,
    ExportResult,
    Prepared,
    prepare,
    require_random_ops,
    resolve_family,
    trace,
    write,
)

__all__ = ["ExportConfig", "ExportResult", "export", "export_model", "resolve_family"]

QBNN_VERSION = "0.1.0"


def export(
    model: object,
    example_input: torch.Tensor,
    path: str | os.PathLike,
    *,
    config: ExportConfig | None = None,
    bn_update: torch.Tensor | None = None,
    **options: Any,
) -> Path:
    """Compile ``model`` to an ONNX graph obeying the qbnn contract; returns the written path.

    ``model``: a torch module (Bayesian-Torch layers, dropout; a one-network ensemble whose
    forward returns k members stacked on the batch axis, ``[k*B, C]``), a list of
    same-architecture modules (ensemble) or a posterior object (a fitted laplace-torch object,
    :class:`~qbnn.exporters.families.swag.SwagPosterior`,
    :class:`~qbnn.exporters.families.ensemble.WeightSamples`,
    :class:`~qbnn.exporters.families.gaussian.WeightGaussian`). ``example_input``:
    ``[B, *feature_shape]``, float (exported as float32) or integer token ids (int64 / int32,
    kept). The graph takes ``input [B', *feature_shape]`` and an optional int64 scalar
    ``num_samples`` and returns ``probs [S, B', C]``, ``mean_probs [B', C]``,
    ``predictive_entropy``, ``expected_entropy``, ``mutual_information`` ``[B']``; a multi-label
    head (``head='multilabel'`` for K logits, or detected sigmoid outputs) has K independent
    per-label probabilities in ``probs [S, B', K]`` / ``mean_probs [B', K]``, entropies summed
    over the labels and adds ``label_predictive_entropy``, ``label_expected_entropy``,
    ``label_mutual_information`` ``[B', K]`` (regression:
    ``mean [S, B', D]``, ``pred_mean``, ``pred_variance [B', D]``). ``config``: an
    :class:`ExportConfig`; ``options``: its fields as keywords (``posterior``, ``sampling``,
    ``num_samples``, ``task``, ``seed``, ``verify``, ``verify_samples``, ``opset``, ``source``,
    ``heteroscedastic``, ``noise_variance``, ``head``), applied over ``config``. ``bn_update``:
    training inputs ``[N, *feature_shape]`` to recompute BatchNorm statistics per ``frozen:K``
    draw of a whole-network posterior (:mod:`qbnn.exporters.checks.bnstats`). Raises
    :class:`ConfigError`, :class:`ExportError` (also for a graph that fixes the batch axis),
    :class:`UnsupportedLayerError`, :class:`VerificationError` (``qbnn.runtimes.errors``).
    """
    return export_model(
        model, example_input, path, config=config, bn_update=bn_update, **options
    ).path


def export_model(
    model: object,
    example_input: torch.Tensor,
    path: str | os.PathLike,
    *,
    config: ExportConfig | None = None,
    bn_update: torch.Tensor | None = None,
    **options: Any,
) -> ExportResult:
    """Like :func:`export` but returns an :class:`ExportResult` with the self-check numbers."""
    cfg = _config(config, options)
    path = Path(path)
    p = prepare(model, example_input, path, cfg, bn_update)
    proto = trace(p, cfg.opset)
    result = run_passes(
        proto, export_passes(TEMPLATE, cfg.seed, _metadata(p, cfg), cfg.split)
    )
    p.built.notes.extend(result.notes)  # the user's own random ops became qbnn's, the split
    require_random_ops(result.model, p)
    return write(result.model, path, p, cfg)


def _config(config: ExportConfig | None, options: dict[str, Any]) -> ExportConfig:
    base = config if config is not None else ExportConfig()
    valid = ExportConfig.__dataclass_fields__
    for name in options:
        if name not in valid:
            raise TypeError(f"export() got an unexpected keyword argument '{name}'")
    return base.replace(**options) if options else base


def _source(family: str) -> str:
    """The family's trainer and version, and torch's (``qbnn.source``)."""
    return get_exporter(family).source()


def _metadata(p: Prepared, cfg: ExportConfig) -> dict[str, str]:
    """The contract's ``qbnn.*`` metadata of the graph (one typed record: ContractMeta)."""
    task_e, family, out_dim, head_e = p.task, p.family, p.out_dim, p.head
    classifier = task_e == Task.CLASSIFICATION
    meta = ContractMeta(
        format_version=FORMAT_VERSION,
        task=task_e,
        posterior=family,
        sampling=str(p.mode),
        default_samples=cfg.num_samples,
        precision="fp32",
        source=cfg.source or _source(family),
        version=QBNN_VERSION,
        input_shape=tuple(p.x.shape[1:]),
        seed=cfg.seed,
        num_classes=out_dim if classifier else None,
        output_dim=None if classifier else out_dim,
        heteroscedastic=p.heteroscedastic,
        head=head_e.value if classifier else None,
        multilabel=True if classifier and head_e.multilabel else None,
        output_shape=(head_e.shape or (out_dim,)) if classifier else None,
        noise_variance=p.noise_variance or None,
    )
    return meta.to_props()
