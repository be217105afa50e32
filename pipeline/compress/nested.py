"""Bayesian Bits' nested activation rounding as ONNX float32 ops, bit-exact with its quantizer.

Direct rounding ``s_b round(x / s_b)`` (what QuantizeLinear does) equals the nested residual
rounding of Bayesian Bits except where float32 error in the residuals tips a value across a
rounding tie; a deployed network that must compute exactly what was trained uses the chain
itself: ``x = min(max(x, lo), hi)``, ``x_2 = s_2 Round(x / s_2)``, ``r = x - x_2``, per level
``e = s Round(r / s)``, ``r <- r - e``, and ``x_q = x_2 + (e_4 + (e_8 + ...))`` (the order in
which the gated sum of the quantizer adds them). Values stay on the b-bit grid.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .lowbit import grid_scale

__all__ = ["insert_nested_activation"]


def insert_nested_activation(
    model: onnx.ModelProto, node_name: str, bits: int, lo: float, hi: float
) -> None:
    """Replace input 0 of ``node_name`` by its Bayesian-Bits ``bits``-bit value on ``[lo, hi]``
    (bits in 2, 4, 8, 16), computed with the nested chain above; in place."""
    g = model.graph
    node = next(n for n in g.node if n.name == node_name)
    p = f"qbnn/compress/nested/{node_name}"
    f32 = np.float32
    consts = {"lo": f32(lo), "hi": f32(hi), "s2": grid_scale(lo, hi, 2)}
    levels = []
    level, s = 2, consts["s2"]
    while level < bits:
        s = f32(s / f32(2**level + 1))
        level *= 2
        consts[f"s{level}"] = s
        levels.append(level)
    g.initializer.extend(numpy_helper.from_array(np.asarray(v, f32), f"{p}/{k}")
                         for k, v in consts.items())  # fmt: skip
    nodes = []

    def op(kind: str, ins: list[str], out: str) -> str:
        nodes.append(helper.make_node(kind, ins, [f"{p}/{out}"], name=f"{p}/{out}"))
        return f"{p}/{out}"

    x = op("Min", [op("Max", [node.input[0], f"{p}/lo"], "max"), f"{p}/hi"], "clip")
    x2 = op("Mul", [op("Round", [op("Div", [x, f"{p}/s2"], "d2")], "k2"), f"{p}/s2"], "x2")
    r = op("Sub", [x, x2], "r2")
    eps = []
    for lv in levels:
        e = op("Mul", [op("Round", [op("Div", [r, f"{p}/s{lv}"], f"d{lv}")], f"k{lv}"),
                       f"{p}/s{lv}"], f"e{lv}")  # fmt: skip
        r = op("Sub", [r, e], f"r{lv}")
        eps.append(e)
    acc = eps[-1] if eps else None
    for i, e in enumerate(reversed(eps[:-1])):
        acc = op("Add", [e, acc], f"acc{i}")
    out = x2 if acc is None else op("Add", [x2, acc], "xq")
    idx = list(g.node).index(node)
    for k, n in enumerate(nodes):
        g.node.insert(idx + k, n)
    node.input[0] = out
