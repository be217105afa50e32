"""7-bit weight grids for int8 convolutions and GEMMs (ONNX Runtime's ``reduce_range``).

ONNX Runtime's u8 x s8 kernels on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply
with ``vpmaddubsw``, which adds *pairs* of uint8 x int8 products into a saturating int16: two
products of 255 x 127 overflow it. Measured on this machine (AVX2): an INC-quantized 16-channel
3x3 convolution on inputs in [0, 1] had 143 of 4,608 outputs off by more than 2 output steps (up
to 6.3) against the same int8 arithmetic done exactly; ONNX Runtime documents ``reduce_range``
(7-bit weights) as the fix. INC 1.0 accepts ``reduce_range`` but still writes weights in
[-127, 127], so qbnn halves the weight grid after quantization: ``w_q' = round(w_q / 2)``
(|w_q'| <= 64, so a pair sum stays below 2 * 255 * 64 = 32,640 < 32,767) and ``scale' = 2 scale``;
int32 biases quantized with ``x_scale * w_scale`` are halved with it. The cost is one bit of
weight resolution.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["SAFE_QMAX", "reduce_weight_range"]

#: largest int8 weight magnitude that cannot saturate the int16 pair sums
SAFE_QMAX = 64

#: op type -> (weight, weight scale, int32 bias) input positions of QOperator nodes
_QOPS = {"QLinearConv": (3, 4, 8), "QGemm": (3, 4, 6), "QLinearMatMul": (3, 4, None)}
_FLOAT_OPS = {"Conv": 2, "Gemm": 2, "MatMul": None}


def _symmetric(inits: dict[str, onnx.TensorProto], zero_point: str | None) -> bool:
    if not zero_point:
        return True
    return zero_point in inits and not numpy_helper.to_array(inits[zero_point]).any()


def _halve(inits: dict[str, onnx.TensorProto], w: str, scale: str, biases: list[str]) -> bool:
    q = numpy_helper.to_array(inits[w])
    if q.dtype != np.int8 or np.abs(q.astype(np.int32)).max() <= SAFE_QMAX:
        return False
    inits[w].CopyFrom(numpy_helper.from_array(np.round(q / 2.0).astype(np.int8), w))
    s = numpy_helper.to_array(inits[scale])
    inits[scale].CopyFrom(numpy_helper.from_array((s * 2).astype(s.dtype), scale))
    for b in biases:
        arr = numpy_helper.to_array(inits[b])
        inits[b].CopyFrom(numpy_helper.from_array(np.round(arr / 2.0).astype(arr.dtype), b))
    return True


def _qdq_pairs(model: onnx.ModelProto, inits) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """QDQ form: ``(weight, scale, [(bias, bias_scale)])`` for every DequantizeLinear of an int8
    initializer feeding a Conv/Gemm/MatMul as its weight."""
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    out = []
    for node in model.graph.node:
        if node.op_type not in _FLOAT_OPS or len(node.input) < 2 or node.input[1] not in dq:
            continue
        wdq = dq[node.input[1]]
        zp = wdq.input[2] if len(wdq.input) > 2 else None
        if wdq.input[0] not in inits or wdq.input[1] not in inits or not _symmetric(inits, zp):
            continue
        biases = []
        pos = _FLOAT_OPS[node.op_type]
        if pos is not None and len(node.input) > pos and node.input[pos] in dq:
            bdq = dq[node.input[pos]]
            if bdq.input[0] in inits and bdq.input[1] in inits:
                biases.append((bdq.input[0], bdq.input[1]))
        out.append((wdq.input[0], wdq.input[1], biases))
    return out


def reduce_weight_range(model: onnx.ModelProto) -> list[str]:
    """Halve the int8 weight grid of every quantized convolution / GEMM whose weights exceed
    :data:`SAFE_QMAX` in magnitude, in place (QOperator ``QLinearConv``/``QGemm``/
    ``QLinearMatMul`` and QDQ ``DequantizeLinear -> Conv/Gemm/MatMul``). Returns the names of
    the weights changed. The dequantized weights move by at most half an original step."""
    inits = {t.name: t for t in model.graph.initializer}
    changed: list[str] = []
    for node in model.graph.node:
        pos = _QOPS.get(node.op_type)
        if pos is None or len(node.input) <= pos[1]:
            continue
        w, s = node.input[pos[0]], node.input[pos[1]]
        zp = node.input[5] if len(node.input) > 5 else None
        if w in changed or w not in inits or s not in inits or not _symmetric(inits, zp):
            continue
        b = pos[2]
        biases = [node.input[b]] if b is not None and len(node.input) > b and node.input[b] else []
        if _halve(inits, w, s, [x for x in biases if x in inits]):
            changed.append(w)
    for w, s, bias_pairs in _qdq_pairs(model, inits):
        if w in changed:
            continue
        if _halve(inits, w, s, [b for b, _ in bias_pairs]):
            for _, bs in bias_pairs:
                arr = numpy_helper.to_array(inits[bs])
                inits[bs].CopyFrom(numpy_helper.from_array((arr * 2).astype(arr.dtype), bs))
            changed.append(w)
    return changed
