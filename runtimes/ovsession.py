"""Native OpenVINO backend: qbnn's ONNX files compiled by the ``openvino`` package's CPU plugin.

What the factory does to the (already reseeded) model before compiling it:

* ``num_samples``: a plain int64 scalar input since contract format 2, which OpenVINO reads
  as an input like ONNX Runtime does (callers feed it; :class:`~qbnn.runtimes.Predictor` feeds
  the default). Format-1 files backed it by an initializer, which OpenVINO's ONNX frontend
  freezes into a constant ("Port for tensor name num_samples was not found" when fed);
  :func:`qbnn.runtimes.formats.upgrade` drops that initializer first.
* Seeds: the frontend maps an ONNX float ``seed`` to OpenVINO's ``op_seed`` by its bit pattern
  (``global_seed`` 0). ``op_seed == global_seed == 0`` means "seed from ``time(NULL)``" (one
  value per second: two sessions opened in the same second would draw the same noise), so a
  zero seed is replaced by 2**24 (qbnn's seeds are below 2**24) and a random node without a
  seed gets one from OS entropy.
* Measured semantics (openvino 2026.4, CPU): RandomUniform is a Philox stream per node
  (key ``global_seed``, counter ``op_seed``) whose position advances after every inference
  by 256 x the elements drawn, and the state lives in the compiled model (shared by its infer
  requests). So one session draws fresh noise on every call, and a session compiled from the
  same seeded graph replays the same sequence of calls: qbnn's contract holds without
  reseeding per call. The draws do not depend on the thread count. With more than one stream
  each stream would hold its own copy of the state (and replay the others), so sessions use
  ``NUM_STREAMS`` 1.
* Precision: ``INFERENCE_PRECISION_HINT`` is set explicitly (``f32`` unless ``bf16`` is asked
  for: the CPU plugin's default is bf16 on CPUs with AVX512-BF16 or AMX) and read back.
"""

from __future__ import annotations

import importlib.util
import logging
import queue
from functools import cache
from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper

from .errors import ModelLoadError, RuntimeInputError, first_line
from .formats import upgrade
from .onnxgraph import subgraphs, walk_nodes
from .options import Precision, SessionOptions
from .providers import BackendSession, register_provider
from .seeding import random_nodes

__all__ = ["OpenVINOSession", "QOPERATOR_OPS", "openvino_session"]

log = logging.getLogger("qbnn.runtime")

INSTALL_HINT = "pip install 'openvino>=2026.4,<2027' (a default dependency of qbnn)"
#: Ops of ONNX's QOperator int8 format (and ONNX Runtime's com.microsoft extensions of it)
QOPERATOR_OPS = frozenset(
    {
        "QGemm",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QAttention",
    }  # fmt: skip
)
_PRECISION_HINT = {Precision.FP32: "f32", Precision.BF16: "bf16"}
_SEED_FOR_ZERO = float(2**24)


@cache
def _core():
    try:
        import openvino as ov
    except ImportError as exc:
        raise ModelLoadError(
            f"provider 'openvino' needs the openvino package: {INSTALL_HINT}"
        ) from exc
    return ov.Core()


@cache
def _available() -> bool:
    """Installed? (Checked without importing openvino, which takes ~0.3 s; its CPU plugin
    ships in the same wheel.)"""
    return importlib.util.find_spec("openvino") is not None


def _openvino_seeds(model: onnx.ModelProto) -> None:
    """No random node may reach OpenVINO with seed 0 (= time-seeded) or without a seed."""
    fresh = np.random.SeedSequence().generate_state(len(model.graph.node) + 1)
    for i, node in enumerate(random_nodes(model)):
        seeds = [a for a in node.attribute if a.name == "seed"]
        if seeds and np.float32(seeds[0].f).view(np.uint32) != 0:
            continue
        value = _SEED_FOR_ZERO if seeds else float(int(fresh[i]) % 2**24 + 1)
        kept = [a for a in node.attribute if a.name != "seed"]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("seed", value)])


def _is_qoperator(node: onnx.NodeProto) -> bool:
    return node.op_type.startswith("QLinear") or node.op_type in QOPERATOR_OPS


def _qoperator_ops(model: onnx.ModelProto) -> list[str]:
    """QOperator op types of the main graph."""
    return sorted({n.op_type for n in model.graph.node if _is_qoperator(n)})


def _loop_qoperator_ops(model: onnx.ModelProto) -> list[str]:
    """QOperator op types inside Scan / Loop / If bodies (the sample loop's int8 form)."""
    bodies = [g for node in model.graph.node for g in subgraphs(node)]
    return sorted({n.op_type for g in bodies for n in walk_nodes(g) if _is_qoperator(n)})


def _refuse_unconvertible(model: onnx.ModelProto, source: str) -> None:
    """Refuse, before OpenVINO sees it, a graph it cannot convert.

    OpenVINO 2026.4's ONNX frontend *crashes the process* (segmentation fault in
    libopenvino) on the sample loop's int8 form, QLinearConv with per-sample run-time int8
    weights inside a Scan body (seen on a ResNet-20 ``weight`` graph quantized as QDQ), so
    such graphs never reach it. Main-graph QOperator graphs fail to convert with an exception;
    they are refused the same way, with the same one-line message as before.
    """
    loop_ops = _loop_qoperator_ops(model)
    if loop_ops:
        raise ModelLoadError(
            f"OpenVINO cannot run {source}: its sample loop computes with per-sample int8 "
            f"weights ({', '.join(loop_ops)} inside the Scan body), which OpenVINO does not "
            "convert; run it on provider 'cpu' (auto does), or run the fp32 graph on OpenVINO"
        )
    ops = _qoperator_ops(model)
    if ops:
        raise ModelLoadError(
            f"OpenVINO cannot run {source}: it is an int8 QOperator graph ({', '.join(ops)}), "
            "which OpenVINO does not convert; re-quantize it with quant_format QDQ (qbnn quantize "
            "--format qdq, or QuantConfig(format='qdq')) or run it on provider 'cpu'"
        )


def _conversion_summary(exc: BaseException) -> str:
    """The ``Summary:`` lines of OpenVINO's unconverted-ops report, else the first line."""
    text = str(exc)
    if "Summary:" in text:
        lines = text.split("Summary:", 1)[1].splitlines()
        items = [ln.strip("- ").strip() for ln in lines if ln.strip().startswith("--")]
        if items:
            return "; ".join(items)
    return first_line(exc)


def _load_error(source: str, exc: BaseException) -> ModelLoadError:
    """OpenVINO failed to convert or compile a graph that passed :func:`_refuse_unconvertible`."""
    return ModelLoadError(f"OpenVINO cannot convert {source}: {_conversion_summary(exc)}")


class _Arg(NamedTuple):
    """ONNX Runtime ``NodeArg``-like description of an input or output."""

    name: str
    shape: list[int | str]
    type: str


def _arg(port) -> _Arg:
    shape = [d.get_length() if d.is_static else "?" for d in port.get_partial_shape()]
    return _Arg(port.get_any_name(), shape, port.get_element_type().get_type_name())


class OpenVINOSession:
    """An OpenVINO compiled model behind ONNX Runtime's ``run(output_names, feed)`` convention.

    Thread-safe: every call takes an idle infer request (or makes one); calls share the
    compiled model's random-number state. Every input is fed by the caller (``num_samples``
    too, as in ONNX Runtime).
    """

    def __init__(self, compiled) -> None:
        self.compiled = compiled
        self._inputs = [_arg(p) for p in compiled.inputs]
        self._outputs = {p.get_any_name(): p for p in compiled.outputs}
        self._idle: queue.SimpleQueue = queue.SimpleQueue()

    def get_inputs(self) -> list[_Arg]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Arg]:
        return [_arg(p) for p in self._outputs.values()]

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs ``output_names`` (all when ``None``) for ``feed`` (name -> array)."""
        names = list(self._outputs) if output_names is None else list(output_names)
        unknown = [n for n in names if n not in self._outputs]
        if unknown:
            raise RuntimeInputError(
                f"unknown outputs {unknown}; the model has {list(self._outputs)}"
            )
        expected = [a.name for a in self._inputs]
        if sorted(feed) != sorted(expected):
            raise RuntimeInputError(f"feed has inputs {sorted(feed)}; the model takes {expected}")
        try:
            req = self._idle.get_nowait()
        except queue.Empty:
            req = self.compiled.create_infer_request()
        try:
            res = req.infer(feed, share_inputs=False, share_outputs=False)
            return [np.asarray(res[self._outputs[n]]) for n in names]
        finally:
            self._idle.put(req)


def _config(options: SessionOptions) -> dict[str, str]:
    cfg = {
        "INFERENCE_PRECISION_HINT": _PRECISION_HINT[options.precision],
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",  # one random-number state per session (see module docstring)
    }
    if options.threads is not None:
        cfg["INFERENCE_NUM_THREADS"] = str(options.threads)
    return {**cfg, **{k: str(v) for k, v in options.provider_options.items()}}


def _read_precision(compiled) -> Precision:
    name = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return Precision.BF16 if name == "bf16" else Precision.FP32


@register_provider(
    "openvino",
    ep="openvino:CPU",
    package=INSTALL_HINT,
    rank=1,
    available=_available,
    precisions=(Precision.FP32, Precision.BF16),
    description="native OpenVINO CPU plugin (oneDNN-based)",
)
def openvino_session(
    model: onnx.ModelProto, options: SessionOptions, source: str
) -> BackendSession:
    """Compile ``model`` (modified in place: see the module docstring) on OpenVINO's CPU."""
    _refuse_unconvertible(model, source)
    core = _core()
    upgrade(model)  # a format-1 proto handed in directly (load_onnx upgrades files)
    _openvino_seeds(model)
    try:
        compiled = core.compile_model(
            core.read_model(model.SerializeToString()), "CPU", _config(options)
        )
    except Exception as exc:  # conversion or compilation failed: one line, cause kept
        raise _load_error(source, exc) from exc
    precision = _read_precision(compiled)
    if precision != options.precision:
        log.warning("OpenVINO runs %s in %s (asked for %s)", source, precision, options.precision)
    log.info("opened %s on openvino (CPU, %s)", source, precision)
    return BackendSession(OpenVINOSession(compiled), precision)
