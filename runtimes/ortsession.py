"""ONNX Runtime backend: the ``cpu`` (MLAS) and ``dnnl`` (oneDNN) execution providers.

``num_samples`` is a plain graph input (contract format 2): ``get_inputs()`` lists it and every
call feeds it (:class:`~qbnn.runtimes.Predictor` feeds the model's default).
"""

from __future__ import annotations

import logging
from functools import cache

import onnx

from .errors import ModelLoadError, first_line
from .options import GraphOptLevel, Precision, SessionOptions
from .providers import BackendSession, register_provider

__all__ = ["ort_session"]

log = logging.getLogger("qbnn.runtime")


@cache
def _ort_eps() -> frozenset[str]:
    import onnxruntime as ort

    return frozenset(ort.get_available_providers())


def _ort_options(options: SessionOptions):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: ONNX Runtime writes to stderr, outside qbnn.runtime
    for key, value in options.config_entries.items():
        so.add_session_config_entry(key, str(value))
    if options.threads is not None:
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = {
        GraphOptLevel.DISABLE: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        GraphOptLevel.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        GraphOptLevel.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        GraphOptLevel.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[options.graph_optimization_level]
    return so


def ort_session(
    model: onnx.ModelProto, options: SessionOptions, source: str, *, ep: str, name: str
) -> BackendSession:
    """An ``onnxruntime.InferenceSession`` on ``ep`` (CPU EP as fallback for other EPs)."""
    import onnxruntime as ort

    from .providers import known_providers

    spec = known_providers()[name]
    providers = [(ep, {**spec.default_options, **options.provider_options})]
    if ep != "CPUExecutionProvider":
        providers.append(("CPUExecutionProvider", {}))
    try:
        sess = ort.InferenceSession(
            model.SerializeToString(), _ort_options(options), providers=providers
        )
    except Exception as exc:  # ONNX Runtime refused the graph: say which file and why
        raise ModelLoadError(
            f"ONNX Runtime cannot load {source} on {name}: {first_line(exc)}"
        ) from exc
    log.info("opened %s on %s (%s)", source, name, ep)
    return BackendSession(sess, Precision.FP32)


@register_provider(
    "cpu",
    ep="CPUExecutionProvider",
    package="onnxruntime",
    rank=0,
    available=lambda: "CPUExecutionProvider" in _ort_eps(),
    description="ONNX Runtime CPU EP (MLAS)",
)
def _cpu(model: onnx.ModelProto, options: SessionOptions, source: str) -> BackendSession:
    """With full graph optimization, the sample loop's run-time-weight convolutions get ONNX
    Runtime's NCHWc kernels (:mod:`qbnn.runtimes.nchwc`), on a copy: a provider ``auto`` falls
    back to must still get the portable graph."""
    if options.graph_optimization_level == GraphOptLevel.ALL and _has_loop(model):
        from .nchwc import nchwc_loop_convs

        rewritten = onnx.ModelProto()
        rewritten.CopyFrom(model)
        if nchwc_loop_convs(rewritten):
            model = rewritten
    return ort_session(model, options, source, ep="CPUExecutionProvider", name="cpu")


def _has_loop(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("Scan", "Loop") for n in model.graph.node)


@register_provider(
    "dnnl",
    ep="DnnlExecutionProvider",
    package="an onnxruntime built with --use_dnnl (no PyPI wheel)",
    rank=2,
    available=lambda: "DnnlExecutionProvider" in _ort_eps(),
    description="ONNX Runtime oneDNN EP",
)
def _dnnl(model: onnx.ModelProto, options: SessionOptions, source: str) -> BackendSession:
    return ort_session(model, options, source, ep="DnnlExecutionProvider", name="dnnl")
