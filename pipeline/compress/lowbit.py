"""Weights on a b-bit grid stored in ONNX integer types, and Q/DQ on activations.

Weights: ``DequantizeLinear(codes, scale, zero_point, axis)`` (opset 21) replaces the fp32
initializer under the same tensor name, so every consumer (Conv, Gemm, MatMul, the sampling
math of a ``weight``-mode graph) reads the dequantized grid values. Codes go into the smallest
container that holds them: INT4 / UINT4 (two codes per byte, low nibble first, as ONNX packs
4-bit tensors), INT8 / UINT8, INT16. 2-bit codes sit in a 4-bit container. ONNX Runtime 1.32
runs these DequantizeLinear nodes on its CPU provider (checked in the tests); the op after them
computes in fp32, so 2/4/16-bit layers gain file size, not speed.

Activations: ``QuantizeLinear -> DequantizeLinear`` (clipped first when narrower than the
container) in front of the layer's op, with the
unsigned grid ``s = (hi - lo) / (2**bits - 1)`` of a fixed or calibrated range ``[lo, hi]``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qbnn.runtimes.errors import ConfigError

__all__ = [
    "OPSET",
    "activation_grid",
    "container",
    "ensure_opset",
    "insert_activation_qdq",
    "pack4",
    "replace_with_dq",
    "weight_grid",
]

OPSET = 21
_CONTAINERS = (  # (onnx type, lo, hi, numpy dtype, bits)
    (TensorProto.INT4, -8, 7, np.int8, 4),
    (TensorProto.UINT4, 0, 15, np.uint8, 4),
    (TensorProto.INT8, -128, 127, np.int8, 8),
    (TensorProto.UINT8, 0, 255, np.uint8, 8),
    (TensorProto.INT16, -32768, 32767, np.int16, 16),
)


def weight_grid(
    w: np.ndarray, bits: int, out_axis: int = 0, rng: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Round ``w`` onto a ``bits``-bit grid: ``(codes int64 [w.shape], scale float32)``.

    With ``rng=(lo, hi)`` (a learned range, Bayesian Bits): one scale
    ``s = (hi - lo) / (2**bits - 1)`` and codes rounded the way Bayesian Bits' residual
    decomposition rounds them (:func:`_nested_grid`): ``round(clip(w, lo, hi) / s)`` except at
    ties (such as the clip edges), where the nested rounding decides; ``scale`` has shape
    ``[]``.
    Without: symmetric per output channel, ``s_c = max|w_c| / (2**(bits-1) - 1)`` and codes in
    ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``; ``scale`` has shape ``[C_out]``.
    ``bits == 0``: all codes 0 (the layer is pruned). ``w * 0 + codes * scale`` is the
    dequantized weight (``scale`` broadcast along ``out_axis``).
    """
    if bits == 0:
        return np.zeros(w.shape, np.int64), np.ones((), np.float32)
    if rng is not None:
        return _nested_grid(w, bits, *rng)
    qmax = 2 ** (bits - 1) - 1
    axes = tuple(i for i in range(w.ndim) if i != out_axis)
    amax = np.abs(w).max(axis=axes) if w.ndim > 1 else np.abs(w)
    s = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[out_axis] = -1
    codes = np.clip(np.round(w / s.reshape(shape)), -qmax, qmax).astype(np.int64)
    return codes, s


def _nested_grid(w: np.ndarray, bits: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Bayesian Bits' rounding in float32, as its quantizer computes it: ``x_2 = s_2 round(x /
    s_2)``, residual ``r = x - x_2``, then per level ``s <- s / (2**b + 1)``, ``c = round(r /
    s)``, ``r <- r - s c``; the code accumulates as ``k <- k (2**b + 1) + c`` so the value is
    ``s_bits * k``. ``bits`` must be 2, 4, 8 or 16."""
    f32 = np.float32
    x = np.clip(w.astype(f32), f32(lo), f32(hi))
    s = (f32(hi) - f32(lo)) / f32(3)  # grid_scale's chain, step by step
    k = np.round(x / s)
    r = x - s * k
    level = 2
    while level < bits:
        s = s / f32(2**level + 1)
        c = np.round(r / s)
        r = r - s * c
        k = k * f32(2**level + 1) + c
        level *= 2
    return k.astype(np.int64), np.asarray(s, f32)


def container(codes: np.ndarray) -> tuple[int, int, type, int]:
    """The smallest ONNX integer type holding ``codes``: ``(type, zero_point, dtype, bits)``.

    A zero point shifts codes into an unsigned container when they do not fit a signed one.
    """
    lo, hi = (int(codes.min()), int(codes.max())) if codes.size else (0, 0)
    for tp, tlo, thi, dt, bits in _CONTAINERS:
        for zp in (0, -lo):
            if tlo <= zp <= thi and tlo <= lo + zp and hi + zp <= thi:
                return tp, zp, dt, bits
    raise ConfigError(f"weight codes in [{lo}, {hi}] do not fit a 16-bit integer")


def pack4(values: np.ndarray) -> bytes:
    """Pack 4-bit values (``[-8, 7]`` or ``[0, 15]``, any shape) two per byte, low nibble
    first (the ONNX INT4/UINT4 layout); an odd count is padded with a zero nibble."""
    v = (values.astype(np.int64).ravel() & 0xF).astype(np.uint8)
    if v.size % 2:
        v = np.append(v, np.uint8(0))
    return (v[0::2] | (v[1::2] << 4)).astype(np.uint8).tobytes()


def _int_tensor(name: str, values: np.ndarray, tp: int, dt: type, bits: int) -> TensorProto:
    if bits == 4:
        return helper.make_tensor(name, tp, list(values.shape), pack4(values), raw=True)
    return numpy_helper.from_array(values.astype(dt), name)


def replace_with_dq(
    model: onnx.ModelProto,
    name: str,
    codes: np.ndarray,
    scale: np.ndarray,
    axis: int = 0,
) -> int:
    """Replace initializer ``name`` by ``DequantizeLinear(codes, scale, zp)`` producing the same
    tensor name. ``codes``: int ``[shape]``; ``scale``: ``[]`` or ``[shape[axis]]`` float32.
    Returns the bytes of the stored codes."""
    tp, zp, dt, bits = container(codes)
    g = model.graph
    keep = [i for i in g.initializer if i.name != name]
    del g.initializer[:]
    g.initializer.extend(keep)
    q = _int_tensor(f"{name}__q", codes + zp, tp, dt, bits)
    zps = np.full(scale.shape, zp, np.int64)
    g.initializer.extend(
        [
            q,
            numpy_helper.from_array(np.asarray(scale, np.float32), f"{name}__s"),
            _int_tensor(f"{name}__zp", zps, tp, dt, bits),
        ]
    )
    attrs = {"axis": axis} if scale.ndim == 1 else {}
    node = helper.make_node(
        "DequantizeLinear", [q.name, f"{name}__s", f"{name}__zp"], [name],
        name=f"qbnn/compress/dq/{name}", **attrs,
    )  # fmt: skip
    g.node.insert(0, node)
    return len(q.raw_data) or codes.size * np.dtype(dt).itemsize


def grid_scale(lo: float, hi: float, bits: int) -> np.float32:
    """``(hi - lo) / (2**bits - 1)`` computed in float32 as Bayesian Bits' nested scales are:
    ``s_2 = (hi - lo) / 3``, then ``s <- s / (2**b + 1)`` per level (bits in 2, 4, 8, 16)."""
    f32 = np.float32
    s = (f32(hi) - f32(lo)) / f32(3)
    level = 2
    while level < bits:
        s = s / f32(2**level + 1)
        level *= 2
    return f32(s)


def activation_grid(lo: float, hi: float, bits: int) -> tuple[float, int, float, float]:
    """Unsigned ``bits``-bit grid of ``[lo, hi]`` (``lo <= 0`` is widened to include 0):
    ``(scale, zero_point, clip_lo, clip_hi)``; grid values are ``(q - zp) * scale``,
    ``q in [0, 2**bits - 1]``. For bits in (2, 4, 8, 16) the scale is :func:`grid_scale`
    (Bayesian Bits' float32 nested scale), otherwise ``(hi - lo) / (2**bits - 1)``."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    levels = 2**bits - 1
    if hi <= lo:
        s = 1.0
    elif bits in (2, 4, 8, 16):
        s = float(grid_scale(lo, hi, bits))
    else:
        s = float(np.float32((hi - lo) / levels))
    zp = int(np.clip(np.round(-lo / s), 0, levels))
    return s, zp, (0 - zp) * s, (levels - zp) * s


def insert_activation_qdq(
    model: onnx.ModelProto, node_name: str, bits: int, lo: float, hi: float,
    graph: onnx.GraphProto | None = None,
) -> None:  # fmt: skip
    """Quantize input 0 of node ``node_name`` to ``bits`` bits on ``[lo, hi]`` (fake-quant
    ``QuantizeLinear -> DequantizeLinear`` feeding only that node; grids narrower than their
    container (UINT8 up to 8 bits, else UINT16) are clipped first). ``graph``: the (sub)graph
    holding the node (default: the main graph)."""
    g = graph if graph is not None else model.graph
    node = next(n for n in g.node if n.name == node_name)
    src = node.input[0]
    s, zp, clo, chi = activation_grid(lo, hi, bits)
    # UINT8 / UINT16 containers: ONNX Runtime 1.32 moves Q/DQ pairs across MaxPool/Reshape
    # and then fails on UINT4 tensors there, and its Clip+QuantizeLinear fusion fails on UINT4
    # zero points; a narrower grid in a wider container computes the same values.
    dt = np.uint8 if bits <= 8 else np.uint16
    p = f"qbnn/compress/act/{node_name}"
    zpt = numpy_helper.from_array(np.asarray(zp, dt), f"{p}/zp")
    g.initializer.extend(
        [
            numpy_helper.from_array(np.float32(clo), f"{p}/lo"),
            numpy_helper.from_array(np.float32(chi), f"{p}/hi"),
            numpy_helper.from_array(np.float32(s), f"{p}/s"),
            zpt,
        ]
    )
    nodes = []
    q_in = src
    if bits not in (8, 16):  # QuantizeLinear saturates to the container; narrower grids
        # are clipped first
        nodes += [
            helper.make_node("Max", [src, f"{p}/lo"], [f"{p}/max"], name=f"{p}/Max"),
            helper.make_node("Min", [f"{p}/max", f"{p}/hi"], [f"{p}/clip"], name=f"{p}/Min"),
        ]
        q_in = f"{p}/clip"
    nodes += [
        helper.make_node("QuantizeLinear", [q_in, f"{p}/s", f"{p}/zp"], [f"{p}/q"],
                         name=f"{p}/Q"),
        helper.make_node("DequantizeLinear", [f"{p}/q", f"{p}/s", f"{p}/zp"], [f"{p}/dq"],
                         name=f"{p}/DQ"),
    ]  # fmt: skip
    idx = list(g.node).index(node)
    for k, n in enumerate(nodes):
        g.node.insert(idx + k, n)
    node.input[0] = f"{p}/dq"


def ensure_opset(model: onnx.ModelProto, version: int = OPSET) -> None:
    """Raise the default-domain opset to ``version`` (4-bit DequantizeLinear needs 21).

    The ops qbnn's graphs use do not change meaning between opsets 18 and 21 (only new
    types and attributes); the tests compare outputs before and after."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < version:
            o.version = version
    if model.ir_version < 10:
        model.ir_version = 10
