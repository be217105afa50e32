"""int8 convolutions with per-sample weights inside the sample loop (the QBNN arithmetic).

A ``weight``-mode graph (:mod:`qbnn.exporters.modules.loopmodel`) draws every Monte-Carlo sample's
weights ``W [S, O, C/g, *k]`` in the outer graph and runs the network in an ONNX ``Scan`` whose
convolutions take the sample's weight as a run-time input. Static quantizers (INC, ONNX
Runtime's ``quantize_static``) only quantize initializer weights, so they leave these
convolutions in fp32, where ONNX Runtime's kernels are several times slower than with constant
weights. This pass applies the arithmetic of Intel's Bayesian-Torch QBNN study instead:

* each sample's weight is quantized per output channel at run time, in the outer graph, for all
  S samples at once: ``scale [S, O] = max|W_s| / 63`` over the channel, ``W_q = round(W / scale)``
  clipped to [-63, 63], int8 (symmetric, zero point 0). Seven bits, not eight: ONNX Runtime's
  u8 x s8 kernel for run-time weights sums pairs of products in int16 with saturation (measured
  on this Zen 5 CPU: channel gains down to 0.90 with weights in [-127, 127], exact with
  [-63, 63]), the problem ONNX Runtime's ``reduce_range`` option exists for;
* the activations entering and leaving each such convolution get static uint8 scales from
  calibration through every sample path (the body's tensors are exposed as extra Scan outputs
  while calibrating, so the ranges cover the posterior noise);
* in the body ``Conv(x, W_s, b_s)`` becomes ``QuantizeLinear(x) -> QLinearConv(x_q, W_q[s],
  scale[s]) -> DequantizeLinear`` (+ the bias in fp32), which ONNX Runtime runs in its int8
  kernels with a run-time weight.

The random ops, the weight draw and everything outside the body's convolutions stay fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatch

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qbnn.runtimes.contract import INPUT, NUM_SAMPLES

#: largest int8 weight magnitude (7-bit range, see the module docstring)
WEIGHT_QMAX = 63

__all__ = [
    "WEIGHT_QMAX",
    "LoopConv",
    "calibrate_loop",
    "find_loop_convs",
    "quantize_loop",
    "quantize_loop_convs",
]


@dataclass(frozen=True)
class LoopConv:
    """A body convolution with a per-sample weight: ``scan`` node index in the top graph,
    ``node`` index in the body, ``weight_slot`` = position of its weight among the Scan's scan
    inputs, its input ``x`` and output ``y`` tensor names and its node ``name``."""

    scan: int
    node: int
    weight_slot: int
    x: str
    y: str
    name: str


def _attr(node: onnx.NodeProto, name: str):
    for a in node.attribute:
        if a.name == name:
            return a
    return None


def _body(scan: onnx.NodeProto) -> onnx.GraphProto:
    return _attr(scan, "body").g


def _num_states(scan: onnx.NodeProto) -> int:
    return len(scan.input) - _attr(scan, "num_scan_inputs").i


def find_loop_convs(model: onnx.ModelProto) -> list[LoopConv]:
    """Every ``Conv`` in a top-level Scan body whose weight is a scan input (a per-sample
    weight) and whose bias, if any, is a scan input or a constant."""
    out = []
    for si, scan in enumerate(model.graph.node):
        if scan.op_type != "Scan":
            continue
        body = _body(scan)
        states = _num_states(scan)
        slots = {inp.name: i - states for i, inp in enumerate(body.input) if i >= states}
        for ni, node in enumerate(body.node):
            if node.op_type == "Conv" and len(node.input) >= 2 and node.input[1] in slots:
                slot = slots[node.input[1]]
                out.append(LoopConv(si, ni, slot, node.input[0], node.output[0], node.name))
    return out


def calibrate_loop(
    model: onnx.ModelProto,
    convs: list[LoopConv],
    batches: Iterable[dict[str, np.ndarray]],
    session_factory: Callable[[bytes], object],
) -> dict[str, tuple[float, float]]:
    """Min and max of every looped convolution's input and output over ``batches`` (feeds of
    the model, e.g. ``{"input": x [B, *F] float32, "num_samples": int64 scalar}``), across all
    MC samples: the body's tensors are exposed as extra Scan outputs ``[S, ...]`` of a copy.

    ``session_factory(model_bytes) -> onnxruntime.InferenceSession``.
    """
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outer_names = []
    for si, group in _by_scan(convs).items():
        tensors = list(dict.fromkeys(t for c in group for t in (c.x, c.y)))
        scan = probe.graph.node[si]
        body = _body(scan)
        for t in tensors:
            body.node.append(helper.make_node("Identity", [t], [f"{t}/calib"]))
            body.output.append(helper.make_tensor_value_info(f"{t}/calib", TensorProto.FLOAT, None))
            outer = f"qbnn_calib/{t}"
            scan.output.append(outer)
            probe.graph.output.append(helper.make_tensor_value_info(outer, TensorProto.FLOAT, None))
            outer_names.append((t, outer))
        n_out = len(body.output) - _num_states(scan)
        dirs = _attr(scan, "scan_output_directions")
        if dirs is not None:
            del dirs.ints[:]
            dirs.ints.extend([0] * n_out)
    sess = session_factory(probe.SerializeToString())
    ranges: dict[str, tuple[float, float]] = {}
    for feed in batches:
        vals = sess.run([o for _, o in outer_names], feed)
        for (t, _), v in zip(outer_names, vals, strict=True):
            lo, hi = float(np.min(v)), float(np.max(v))
            if t in ranges:
                lo, hi = min(lo, ranges[t][0]), max(hi, ranges[t][1])
            ranges[t] = (lo, hi)
    return ranges


def _by_scan(convs: list[LoopConv]) -> dict[int, list[LoopConv]]:
    """The convolutions grouped by the index of their Scan node."""
    out: dict[int, list[LoopConv]] = {}
    for c in convs:
        out.setdefault(c.scan, []).append(c)
    return out


def _uint8_params(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return float(scale), zp


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def quantize_loop_convs(
    model: onnx.ModelProto,
    convs: list[LoopConv],
    ranges: dict[str, tuple[float, float]],
    weight_qmax: int = WEIGHT_QMAX,
) -> onnx.ModelProto:
    """A copy of ``model`` whose looped convolutions run as int8 ``QLinearConv`` with per-sample
    per-channel weight scales computed in the outer graph (see the module docstring)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    # last Scan first: weight-quantization nodes inserted before a Scan shift later indices
    for si, group in sorted(_by_scan(convs).items(), reverse=True):
        scan = g.node[si]
        body = _body(scan)
        states = _num_states(scan)
        n_scan_in = _attr(scan, "num_scan_inputs")
        new_outer: list[onnx.NodeProto] = []
        quantized_slots: dict[int, tuple[str, str]] = {}
        for c in group:
            if c.weight_slot in quantized_slots:
                continue
            w_outer = scan.input[states + c.weight_slot]
            p = f"qbnn/loopq/{c.weight_slot}"
            new_outer += _weight_quant_nodes(g, w_outer, p, weight_qmax)
            quantized_slots[c.weight_slot] = (f"{p}/w_q", f"{p}/w_scale")
        # outer: the weight scan input becomes its int8 form; each scale is a new scan input
        for slot, (wq, ws) in quantized_slots.items():
            scan.input[states + slot] = wq
            body.input[states + slot].type.tensor_type.elem_type = TensorProto.INT8
            scan.input.append(ws)
            channels = [f"{ws}/channels"]
            body.input.append(helper.make_tensor_value_info(f"{ws}/s", TensorProto.FLOAT, channels))
            n_scan_in.i += 1
            dirs = _attr(scan, "scan_input_directions")
            if dirs is not None:
                dirs.ints.append(0)
        # body: rewrite each conv
        replacements: dict[int, list[onnx.NodeProto]] = {}
        for c in group:
            node = body.node[c.node]
            w_in = node.input[1]
            ws_in = f"{quantized_slots[c.weight_slot][1]}/s"
            replacements[c.node] = _qconv_nodes(body, node, w_in, ws_in, ranges, c)
        nodes = list(body.node)
        del body.node[:]
        for i, node in enumerate(nodes):
            body.node.extend(replacements.get(i, [node]))
        # insert the weight-quantization nodes just before the scan
        nodes = list(g.node)
        del g.node[:]
        g.node.extend(nodes[:si] + new_outer + nodes[si:])
    return out


def _weight_quant_nodes(g: onnx.GraphProto, w: str, p: str, qmax: int) -> list[onnx.NodeProto]:
    """``w [S, O, ...]`` -> ``{p}/w_q`` int8 and ``{p}/w_scale [S, O]`` (per sample, per output
    channel, symmetric)."""
    g.initializer.extend(
        [
            _const(f"{p}/qmax", np.array(float(qmax), np.float32)),
            _const(f"{p}/-qmax", np.array(-float(qmax), np.float32)),
            _const(f"{p}/tiny", np.array(1e-30, np.float32)),
            _const(f"{p}/flat", np.array([0, 0, -1], np.int64)),
            _const(f"{p}/axes", np.array([2], np.int64)),
            _const(f"{p}/shape2", np.array([0, 0], np.int64)),
        ]
    )
    mk = helper.make_node
    return [
        mk("Shape", [w], [f"{p}/shape_w"], name=f"{p}/shape"),
        mk("Reshape", [w, f"{p}/flat"], [f"{p}/w3"], name=f"{p}/flat"),
        mk("Abs", [f"{p}/w3"], [f"{p}/abs"], name=f"{p}/abs"),
        mk("ReduceMax", [f"{p}/abs", f"{p}/axes"], [f"{p}/amax"], keepdims=1, name=f"{p}/amax"),
        mk("Max", [f"{p}/amax", f"{p}/tiny"], [f"{p}/amax1"], name=f"{p}/amax1"),
        mk("Div", [f"{p}/amax1", f"{p}/qmax"], [f"{p}/scale3"], name=f"{p}/scale3"),
        mk("Reshape", [f"{p}/scale3", f"{p}/shape2"], [f"{p}/w_scale"], name=f"{p}/scale"),
        mk("Div", [f"{p}/w3", f"{p}/scale3"], [f"{p}/wdiv"], name=f"{p}/wdiv"),
        mk("Round", [f"{p}/wdiv"], [f"{p}/wr"], name=f"{p}/round"),
        mk("Clip", [f"{p}/wr", f"{p}/-qmax", f"{p}/qmax"], [f"{p}/wc"], name=f"{p}/clip"),
        mk("Reshape", [f"{p}/wc", f"{p}/shape_w"], [f"{p}/wcr"], name=f"{p}/unflat"),
        mk("Cast", [f"{p}/wcr"], [f"{p}/w_q"], to=TensorProto.INT8, name=f"{p}/cast"),
    ]


def _qconv_nodes(body, node, w_in, ws_in, ranges, c: LoopConv) -> list[onnx.NodeProto]:
    p = f"qbnn/loopq/conv{c.node}"
    sx, zx = _uint8_params(*ranges[c.x])
    sy, zy = _uint8_params(*ranges[c.y])
    body.initializer.extend(
        [
            _const(f"{p}/sx", np.array(sx, np.float32)),
            _const(f"{p}/zx", np.array(zx, np.uint8)),
            _const(f"{p}/sy", np.array(sy, np.float32)),
            _const(f"{p}/zy", np.array(zy, np.uint8)),
            _const(f"{p}/zw", np.array(0, np.int8)),
        ]
    )
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    mk = helper.make_node
    y = node.output[0]
    has_bias = len(node.input) > 2 and node.input[2]
    yq_out = f"{p}/y_f" if has_bias else y
    nodes = [
        mk("QuantizeLinear", [node.input[0], f"{p}/sx", f"{p}/zx"], [f"{p}/x_q"], name=f"{p}/qx"),
        mk(
            "QLinearConv",
            [f"{p}/x_q", f"{p}/sx", f"{p}/zx", w_in, ws_in, f"{p}/zw", f"{p}/sy", f"{p}/zy"],
            [f"{p}/y_q"],
            name=f"{p}/qconv",
            **attrs,
        ),
        mk("DequantizeLinear", [f"{p}/y_q", f"{p}/sy", f"{p}/zy"], [yq_out], name=f"{p}/dqy"),
    ]
    if has_bias:
        spatial = len(attrs.get("kernel_shape", (0, 0)))
        bshape = np.array([-1] + [1] * spatial, np.int64)
        body.initializer.append(_const(f"{p}/bshape", bshape))
        nodes += [
            mk("Reshape", [node.input[2], f"{p}/bshape"], [f"{p}/b3"], name=f"{p}/b3"),
            mk("Add", [yq_out, f"{p}/b3"], [y], name=f"{p}/bias"),
        ]
    return nodes


def quantize_loop(
    model: onnx.ModelProto,
    calib: np.ndarray,
    *,
    num_samples: int,
    batch_size: int,
    exclude: Iterable[str] = (),
    session_factory: Callable[[bytes], object],
    weight_qmax: int = WEIGHT_QMAX,
) -> tuple[onnx.ModelProto, list[str]]:
    """The whole pass: find the looped convolutions (skipping node names matching an
    ``exclude`` pattern), calibrate them on ``calib [N, *F]`` float32 with ``num_samples`` MC
    samples per batch of ``batch_size``, rewrite them. Returns the model and the quantized
    convolutions' names (``model`` itself and ``[]`` when the graph has none)."""
    pats = list(exclude)
    convs = [c for c in find_loop_convs(model) if not any(fnmatch(c.name, p) for p in pats)]
    if not convs:
        return model, []
    s = np.array(num_samples, dtype=np.int64)
    feeds = [
        {INPUT: calib[i : i + batch_size], NUM_SAMPLES: s} for i in range(0, len(calib), batch_size)
    ]
    ranges = calibrate_loop(model, convs, feeds, session_factory)
    return quantize_loop_convs(model, convs, ranges, weight_qmax), [c.name for c in convs]
