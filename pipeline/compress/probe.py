"""One ONNX Runtime pass over calibration data: activation ranges and MACs of every layer op.

Relative BOPs (Bayesian Bits, van Baalen et al. 2020): ``sum_l MACs_l * b_w,l * b_a,l /
sum_l MACs_l * 32 * 32`` over the layers' Conv/Gemm/MatMul ops. MACs are counted from the
shapes the ops produce on the calibration data (every MC sample path), so convolutions count
their output positions and pruned channels count as removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from qbnn.runtimes.contract import NUM_SAMPLES

__all__ = ["Probe", "Tap", "probe_model", "probe_taps", "relative_bops"]


@dataclass(frozen=True)
class Probe:
    """Per node name: ``macs`` (multiply-accumulates over the probe run) and ``ranges``
    (min, max of the node's input 0)."""

    macs: dict[str, float]
    ranges: dict[str, tuple[float, float]]


def _node_macs(node: onnx.NodeProto, w: np.ndarray, out: np.ndarray) -> float:
    if node.op_type == "Conv":
        return float(out.size) * float(np.prod(w.shape[1:]))
    if node.op_type == "Gemm":
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        return float(out.size) * float(w.shape[1] if trans_b else w.shape[0])
    return float(out.size) * float(w.shape[0])  # MatMul x[..., K] @ w[K, N]


def probe_model(
    model: onnx.ModelProto, nodes: list[str], x: np.ndarray, num_samples: int = 8,
    batch_size: int = 32,
) -> Probe:  # fmt: skip
    """Run ``model`` (fp32) on ``x [N, *F] float32`` in batches, ``num_samples`` MC samples
    each, recording MACs and input ranges of ``nodes`` (Conv/Gemm/MatMul with an initializer
    weight)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    by_name = {n.name: n for n in m.graph.node}
    inits = {i.name: i for i in m.graph.initializer}
    taps = {}
    for name in nodes:
        n = by_name[name]
        taps[name] = Tap(n, n.input[0], n.output[0], tuple(inits[n.input[1]].dims))
    return probe_taps(m, taps, x, num_samples, batch_size)


@dataclass(frozen=True)
class Tap:
    """A heavy op to probe: the node, the graph outputs holding its input 0 and output (a
    leading sample axis is allowed) and its weight's shape."""

    node: onnx.NodeProto
    input: str
    output: str
    weight_shape: tuple[int, ...]


def probe_taps(
    m: onnx.ModelProto, taps: dict[str, Tap], x: np.ndarray, num_samples: int = 8,
    batch_size: int = 32,
) -> Probe:  # fmt: skip
    """Run ``m`` (made an output of every tap's tensors here; ``m`` is changed) on ``x`` and
    record MACs and input ranges per tap name (see :func:`probe_model`)."""
    import onnxruntime as ort

    have = {o.name for o in m.graph.output}
    for t in dict.fromkeys(v for tap in taps.values() for v in (tap.input, tap.output)):
        if t not in have:
            m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    inits = {i.name for i in m.graph.initializer}
    feeds_s = NUM_SAMPLES in {i.name for i in m.graph.input} or NUM_SAMPLES in inits
    names = [o.name for o in sess.get_outputs()]
    macs = dict.fromkeys(taps, 0.0)
    lo = dict.fromkeys(taps, np.inf)
    hi = dict.fromkeys(taps, -np.inf)
    in_name = m.graph.input[0].name
    for start in range(0, len(x), batch_size):
        feed = {in_name: np.ascontiguousarray(x[start : start + batch_size], np.float32)}
        if feeds_s:
            feed[NUM_SAMPLES] = np.array(num_samples, np.int64)
        res = dict(zip(names, sess.run(names, feed), strict=True))
        for name, tap in taps.items():
            a, out = res[tap.input], res[tap.output]
            macs[name] += _node_macs(tap.node, np.empty(tap.weight_shape, np.float32), out)
            lo[name] = min(lo[name], float(a.min()))
            hi[name] = max(hi[name], float(a.max()))
    return Probe(macs, {n: (lo[n], hi[n]) for n in taps})


def relative_bops(macs: dict[str, float], bits: dict[str, tuple[int, int]]) -> float:
    """``sum MACs * w_bits * a_bits / sum MACs * 32 * 32`` over the nodes in ``macs``;
    ``bits[node] = (w_bits, a_bits)`` (missing nodes count as 32 x 32; 0-bit weights as 0).

    ``macs`` is the *fp32* model's count; pruned channels are accounted for by passing their
    reduced counts (see :func:`pruned_macs`)."""
    total = sum(macs.values())
    if total <= 0:
        return 1.0
    used = sum(m * bits.get(n, (32, 32))[0] * bits.get(n, (32, 32))[1] for n, m in macs.items())
    return used / (total * 32 * 32)
