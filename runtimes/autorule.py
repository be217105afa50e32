"""``auto``: the provider that runs a model fastest, from a measured rule.

The rule looks at two things: what kind of graph it is (:class:`GraphKind`, read from the ONNX
structure, not from metadata) and whether the CPU has int8 dot-product instructions
(``avx512_vnni`` / ``avx_vnni`` / ``amx_int8``). Measurements behind it (2 threads, S = 8):

* ``benchmarks/results/provider_rule.md`` (AVX2 CPU, no VNNI; tiny MLP, digits MLP and
  Bayesian ResNet-20 in ``frozen:8`` / ``lrt`` / ``weight`` (the sample loop), fp32 and int8
  QDQ / QOperator, batch 32 and 1; best of 5-15 interleaved calls, run under ``chrt -f``
  so other processes could not preempt it): dense graphs run 1.2-4x faster on the CPU EP
  (OpenVINO pays ~0.5 ms more per call). Convolutional graphs: int8 QDQ ``frozen:8`` runs
  1.62x (batch 32) / 1.21x (batch 1) faster on OpenVINO, and QDQ ``lrt`` 1.36x / 1.31x;
  fp32 ``frozen:8`` is level at batch 32 (1.03x) and OpenVINO 1.33x at batch 1, while the
  side-by-side peers run (``peers.openvino.md``) had the CPU EP 1.36x faster at batch 32;
  the fp32 ``weight`` loop runs 1.55x faster on OpenVINO at batch 32 but 1.3x slower at
  batch 1. The sample loop's int8 form (QLinearConv with run-time weights) cannot run on
  OpenVINO at all.
* DESIGN.md section 8 (AVX512-VNNI Zen 5, ResNet-20 batch 32, ratios to Bayesian-Torch eager):
  ``frozen:8`` int8 QDQ on OpenVINO 3.51x vs 2.25x (QDQ) / 2.24x (QOperator) on the CPU EP,
  i.e. OpenVINO 1.56x faster (measured before the sample loop existed).

Hence: OpenVINO first for int8 QDQ convolutional graphs (faster at both batch sizes on both
CPU classes measured: 1.21-1.62x); everything else on ONNX Runtime's CPU EP, where the
evidence is level or depends on the batch size (fp32 ``weight`` loops at batch >= 32 gain
1.5x from ``provider="openvino"``; the README says so). ``bf16`` sessions exist only on
OpenVINO, so ``auto`` with precision bf16 picks it whatever the rule says. When the first
choice cannot load a model (e.g. OpenVINO and a QOperator graph) ``open_model`` falls back to
the next. Re-run ``benchmarks/provider_rule.py`` on a new CPU class and edit :data:`RULE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path

import onnx

from .onnxgraph import subgraphs, walk_nodes
from .seeding import RANDOM_OPS

__all__ = [
    "RULE",
    "CpuClass",
    "GraphFeatures",
    "GraphKind",
    "auto_order",
    "cpu_class",
    "features",
    "int8_format",
]

_CONV = frozenset({"Conv", "QLinearConv", "ConvInteger"})
_HEAVY = _CONV | {"MatMul", "Gemm", "QLinearMatMul", "MatMulInteger", "QGemm"}
_QOPERATOR = frozenset({"QGemm", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat"})
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


class GraphKind(StrEnum):
    """What decides the fastest provider."""

    QOPERATOR = "qoperator"  #: int8 QOperator ops (QLinearConv, QGemm, ...): OpenVINO fails
    DENSE = "dense"  #: no convolution (MLPs): per-call overhead dominates
    NOISY_CONV = "noisy-conv"  #: noise reaches a convolution (weight, flipout, lrt, dropout)
    STATIC_CONV = "static-conv"  #: convolutions on constant weights and noise-free inputs


class CpuClass(StrEnum):
    VNNI = "vnni"  #: int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX)
    PLAIN = "plain"  #: none of them (AVX2), or unknown


@dataclass(frozen=True)
class GraphFeatures:
    """``kind``; ``int8``: the graph quantizes activations (QDQ ``QuantizeLinear`` or QOperator
    ops; weight-only int8 storage does not count)."""

    kind: GraphKind
    int8: bool


#: (graph kind, int8 QDQ, CPU class) -> providers, fastest first. Missing keys -> cpu first.
RULE: dict[tuple[GraphKind, bool, CpuClass], tuple[str, ...]] = {
    (GraphKind.STATIC_CONV, True, CpuClass.VNNI): ("openvino", "cpu"),
    (GraphKind.STATIC_CONV, True, CpuClass.PLAIN): ("openvino", "cpu"),
    (GraphKind.NOISY_CONV, True, CpuClass.VNNI): ("openvino", "cpu"),
    (GraphKind.NOISY_CONV, True, CpuClass.PLAIN): ("openvino", "cpu"),
}
_DEFAULT = ("cpu", "openvino")


def _noisy_conv(graph: onnx.GraphProto) -> bool:
    """Whether a tensor derived from a random op feeds a convolution (graph order is
    topological in ONNX). A convolution inside a Loop/Scan/If body counts as noisy when the
    body or the node's inputs carry noise."""
    noisy: set[str] = set()
    for node in graph.node:
        body = [n for g in subgraphs(node) for n in walk_nodes(g)]
        hot = node.op_type in RANDOM_OPS or any(i in noisy for i in node.input if i)
        hot = hot or any(n.op_type in RANDOM_OPS for n in body)
        if hot and (node.op_type in _CONV or any(n.op_type in _CONV for n in body)):
            return True
        if hot:
            noisy.update(o for o in node.output if o)
    return False


def features(model: onnx.ModelProto) -> GraphFeatures:
    """Classify ``model`` for :data:`RULE`."""
    ops = {n.op_type for n in walk_nodes(model.graph)}
    qop = any(o.startswith("QLinear") for o in ops) or bool(ops & _QOPERATOR)
    int8 = qop or "QuantizeLinear" in ops
    if qop:
        kind = GraphKind.QOPERATOR
    elif not ops & _CONV:
        kind = GraphKind.DENSE
    else:
        kind = GraphKind.NOISY_CONV if _noisy_conv(model.graph) else GraphKind.STATIC_CONV
    return GraphFeatures(kind, int8)


@cache
def cpu_class(cpuinfo: str = "/proc/cpuinfo") -> CpuClass:
    """VNNI when the CPU flags list int8 dot-product instructions, else PLAIN (also when the
    flags cannot be read, e.g. off Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return CpuClass.PLAIN
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return CpuClass.VNNI if flags & _VNNI_FLAGS else CpuClass.PLAIN
    return CpuClass.PLAIN


def auto_order(model: onnx.ModelProto, info, available: list[str]) -> list[str]:
    """``available`` provider names ordered by the rule (fastest first); providers the rule
    does not rank keep their registry order after the ranked ones. ``info`` (the model's
    :class:`~qbnn.runtimes.session.ModelInfo`) is accepted for rules that need metadata."""
    f = features(model)
    prefer = RULE.get((f.kind, f.int8, cpu_class()), _DEFAULT)
    ranked = [p for p in prefer if p in available]
    return ranked + [p for p in available if p not in ranked]


def int8_format(model: onnx.ModelProto, available: list[str] | None = None) -> str:
    """The int8 format to quantize fp32 ``model`` to: ``"qdq"`` when ``auto`` would run the
    int8 graph on OpenVINO (which cannot convert QOperator graphs), else ``"qoperator"``
    (ONNX Runtime's CPU EP: QOperator and QDQ measured level, within 5 %, in
    ``benchmarks/results/provider_rule.md``). ``available`` defaults to the providers here."""
    from .providers import available_providers

    here = available_providers() if available is None else available
    kind = features(model).kind
    prefer = RULE.get((kind, True, cpu_class()), _DEFAULT)
    first = next((p for p in prefer if p in here), "cpu")
    return "qdq" if first == "openvino" else "qoperator"
