"""Low-bit compute for weights drawn at run time (``weight``-mode mean-field graphs).

A ``weight``-mode graph draws ``w = mu + sigma * eps`` for all S samples at once (``[S, C_out,
...]``) and a ``Scan`` runs the network once per sample, its Conv/Gemm reading one draw
(:attr:`~.layers.Layer.drawn`). No op reads a stored weight, so static int8 (INC) cannot
quantize it; what the graph allows instead:

- **Drawn weights on a b-bit grid**: ``w_q = s_c * clip(round(w / s_c), -q, q)``, ``q = 2**(b-1)
  - 1``, with a fixed symmetric per-output-channel step ``s_c = max_c(|mu| + 3 sigma) / q`` (the
  draws' range), inserted between the draw and the Scan. Rounding adds variance ``s_c**2 / 12``;
  ``match_variance`` ``m`` shrinks the stored sigma to ``sqrt(max(0, sigma**2 - m s_c**2 / 12))``
  first so the drawn-and-rounded weights keep the posterior variance.
- **Activations on a b-bit grid** in front of the body's op (``QuantizeLinear ->
  DequantizeLinear`` inside the Scan body, calibrated range).

Both are fake quantization (the op computes in fp32 on grid values), as for the ``dq`` route of
stored weights: relative BOPs count the bits of the values multiplied, not a kernel's speed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .layers import Layer
from .lowbit import insert_activation_qdq
from .probe import Probe, Tap, probe_taps

__all__ = ["drawn_step", "probe_drawn", "quantize_drawn_input", "round_drawn"]


def _body_of(model: onnx.ModelProto, node_name: str) -> tuple[onnx.NodeProto, onnx.GraphProto]:
    for scan in model.graph.node:
        if scan.op_type != "Scan":
            continue
        body = next(a.g for a in scan.attribute if a.name == "body")
        if any(n.name == node_name for n in body.node):
            return scan, body
    raise KeyError(node_name)


def probe_drawn(
    model: onnx.ModelProto, layers: list[Layer], x: np.ndarray, num_samples: int = 8
) -> Probe:
    """MACs and input ranges of every drawn layer's body op (keyed by body node name), from
    one run of a copy of ``model`` whose Scans also emit those ops' inputs and outputs."""
    m = onnx.shape_inference.infer_shapes(model)  # Scan outputs need their rank
    inits = {i.name: i for i in m.graph.initializer}
    taps = {}
    for lay in layers:
        shape = tuple(inits[lay.weights[0]].dims)
        for _, node_name in lay.drawn:
            scan, body = _body_of(m, node_name)
            node = next(n for n in body.node if n.name == node_name)
            outer = []
            for t in (node.input[0], node.output[0]):
                name = f"qbnn/probe/{node_name}/{t}"
                copy = f"{name}/copy"  # a body output must not be a body input itself
                body.node.append(helper.make_node("Identity", [t], [copy], name=copy))
                body.output.append(helper.make_tensor_value_info(copy, onnx.TensorProto.FLOAT,
                                                                 _rank(body, t)))  # fmt: skip
                scan.output.append(name)
                outer.append(name)
                for a in scan.attribute:
                    if a.name == "scan_output_directions":
                        a.ints.append(0)
            taps[node_name] = Tap(node, outer[0], outer[1], shape)
    return probe_taps(m, taps, x, num_samples)


def _rank(body: onnx.GraphProto, name: str) -> list[str | int] | None:
    """Symbolic shape ``[d0, d1, ...]`` of ``name`` in ``body`` (from shape inference)."""
    for v in [*body.value_info, *body.input]:
        if v.name == name and v.type.tensor_type.HasField("shape"):
            dims = v.type.tensor_type.shape.dim
            return [d.dim_value or (d.dim_param or f"d{k}") for k, d in enumerate(dims)]
    return None


def drawn_step(mu: np.ndarray, sigma: np.ndarray, bits: int, out_axis: int = 0) -> np.ndarray:
    """The per-output-channel step ``[C_out]`` float32 of the drawn weights' ``bits``-bit grid
    (see the module docstring)."""
    axes = tuple(i for i in range(mu.ndim) if i != out_axis)
    amax = (np.abs(mu) + 3 * sigma).max(axis=axes) if mu.ndim > 1 else np.abs(mu) + 3 * sigma
    q = 2 ** (bits - 1) - 1
    return np.where(amax > 0, amax / q, 1.0).astype(np.float32)


def round_drawn(model: onnx.ModelProto, lay: Layer, bits: int, step: np.ndarray) -> None:
    """Insert the b-bit rounding of the layer's drawn weights (``[S, C_out, ...]``) between each
    draw and its Scan, in place; ``step``: ``[C_out]`` float32 (:func:`drawn_step`)."""
    g = model.graph
    q = float(2 ** (bits - 1) - 1)
    for drawn, _ in dict.fromkeys(lay.drawn):
        p = f"qbnn/compress/drawn/{drawn}"
        ndim = len(next(i for i in g.initializer if i.name == lay.weights[0]).dims) + 1
        shape = [1] * ndim
        shape[lay.out_axis + 1] = -1
        g.initializer.extend([
            numpy_helper.from_array(step.reshape(shape).astype(np.float32), f"{p}/s"),
            numpy_helper.from_array(np.float32(-q), f"{p}/lo"),
            numpy_helper.from_array(np.float32(q), f"{p}/hi"),
        ])  # fmt: skip
        nodes = [
            helper.make_node("Div", [drawn, f"{p}/s"], [f"{p}/d"], name=f"{p}/Div"),
            helper.make_node("Round", [f"{p}/d"], [f"{p}/r"], name=f"{p}/Round"),
            helper.make_node("Clip", [f"{p}/r", f"{p}/lo", f"{p}/hi"], [f"{p}/c"],
                             name=f"{p}/Clip"),
            helper.make_node("Mul", [f"{p}/c", f"{p}/s"], [f"{p}/q"], name=f"{p}/Mul"),
        ]  # fmt: skip
        users = [n for n in g.node if n.op_type == "Scan" and drawn in n.input]
        at = min(list(g.node).index(n) for n in users)
        for n in users:
            for i, name in enumerate(n.input):
                if name == drawn:
                    n.input[i] = f"{p}/q"
        for k, n in enumerate(nodes):
            g.node.insert(at + k, n)


def quantize_drawn_input(
    model: onnx.ModelProto, node_name: str, bits: int, lo: float, hi: float
) -> None:
    """Q/DQ the input activation of the body op ``node_name`` on ``[lo, hi]``, in place."""
    _, body = _body_of(model, node_name)
    insert_activation_qdq(model, node_name, bits, lo, hi, graph=body)
