"""Store the fp32 weights a static quantizer leaves behind as int8 + ``DequantizeLinear``.

In ``weight`` and ``flipout`` sampling the posterior's ``mu`` and ``sigma`` feed run-time
arithmetic (``W_s = mu + sigma * eps``), not a MatMul/Conv weight slot, so static quantizers
leave them fp32. This pass stores them (and any other large fp32 initializer) in 8 bits with a
per-output-channel scale: ``uint8`` with zero point 0 for non-negative tensors such as sigma
(8 bits of resolution relative to the channel's own maximum, so small sigmas survive), else
symmetric ``int8``. Compute stays fp32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["store_weights_int8"]

_SHAPE_CONSUMERS = {
    "Reshape",
    "Expand",
    "Tile",
    "Slice",
    "ConstantOfShape",
    "Resize",
    "Pad",
    "Clip",
}


def _quantize(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None]:
    axis = 0 if arr.ndim >= 2 else None
    flat = arr.reshape(arr.shape[0], -1) if axis == 0 else arr.reshape(1, -1)
    nonneg = bool((arr >= 0).all())
    peak = np.abs(flat).max(axis=1)
    peak[peak == 0] = 1.0
    if nonneg:
        scale = (peak / 255.0).astype(np.float32)
        q = np.clip(np.round(flat / scale[:, None]), 0, 255).astype(np.uint8)
        zp = np.zeros_like(scale, dtype=np.uint8)
    else:
        scale = (peak / 127.0).astype(np.float32)
        q = np.clip(np.round(flat / scale[:, None]), -127, 127).astype(np.int8)
        zp = np.zeros_like(scale, dtype=np.int8)
    if axis is None:
        return q.reshape(arr.shape), scale[0], zp[0], None
    return q.reshape(arr.shape), scale, zp, axis


def store_weights_int8(model: onnx.ModelProto, min_elements: int = 256) -> list[str]:
    """Rewrite, in place, every float32 initializer of at least ``min_elements`` values that
    is not a shape argument; returns the rewritten names."""
    g = model.graph
    consumers: dict[str, set[str]] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    graph_inputs = {i.name for i in g.input}
    done, keep, new_nodes = [], [], []
    for init in g.initializer:
        ops = consumers.get(init.name, set())
        if (
            init.data_type != onnx.TensorProto.FLOAT
            or init.name in graph_inputs
            or not ops
            or ops & _SHAPE_CONSUMERS
            or np.prod(init.dims) < min_elements
        ):
            keep.append(init)
            continue
        arr = numpy_helper.to_array(init)
        q, scale, zp, axis = _quantize(arr)
        base = init.name
        keep += [
            numpy_helper.from_array(q, f"{base}_w8"),
            numpy_helper.from_array(np.asarray(scale, np.float32), f"{base}_w8_scale"),
            numpy_helper.from_array(np.asarray(zp), f"{base}_w8_zp"),
        ]
        kwargs = {} if axis is None else {"axis": axis}
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{base}_w8", f"{base}_w8_scale", f"{base}_w8_zp"],
                [base],
                name=f"qbnn/w8/{base}",
                **kwargs,
            )
        )
        done.append(base)
    del g.initializer[:]
    g.initializer.extend(keep)
    for i, node in enumerate(new_nodes):
        g.node.insert(i, node)
    return done
