"""Which ONNX ops are *row-wise*: row ``i`` of every output depends on row ``i`` of the batched
inputs only, so the op commutes with tiling the batch (``op(tile_S(x)) = tile_S(op(x))``).

Used by :mod:`qbnn.exporters.passes.sink_tile`. A tensor is *batched* when axis 0 is the batch
(``[N, ...]``) and it is a row-wise function of the tiled input. Every rule below is a proof
obligation checked on the graph: an op, attribute or operand shape that is not provably
row-wise (a reduction or ``Softmax`` over axis 0, a ``Reshape`` that moves the batch axis, a
constant that broadcasts against axis 0, a ``MaxPool`` whose indices are used, a training
``BatchNormalization``, a random op) is refused, which stops the motion at that node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qbnn.runtimes.onnxgraph import subgraphs
from qbnn.runtimes.seeding import RANDOM_OPS

__all__ = ["HEAVY_OPS", "Facts", "Rowwise", "rowwise"]

#: Ops whose cost the pass exists to save; a region without one is left alone.
HEAVY_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})

_UNARY = frozenset({
    "Abs", "Cast", "Ceil", "Celu", "Cos", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid",
    "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu", "Log", "Mish", "Neg", "Not",
    "Reciprocal", "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Softplus",
    "Softsign", "Sqrt", "Tanh", "ThresholdedRelu",
})  # fmt: skip
_BROADCAST = frozenset({
    "Add", "And", "Clip", "Div", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual",
    "Max", "Mean", "Min", "Mod", "Mul", "Or", "PRelu", "Pow", "Sub", "Sum", "Where", "Xor",
})  # fmt: skip
_SPATIAL = frozenset({
    "AveragePool", "DepthToSpace", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "LRN",
    "LpPool", "SpaceToDepth",
})  # fmt: skip
_WEIGHTED = frozenset({"Conv", "ConvTranspose", "InstanceNormalization", "GroupNormalization"})
_REDUCE = frozenset({
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
})  # fmt: skip
_AXIS_NOT_0 = frozenset({"Softmax", "LogSoftmax", "Hardmax", "ArgMax", "ArgMin", "Concat", "Split"})
_Sym = int | str | None  # a shape element: a number, "N" / "S" / "B", or None (unknown)


@dataclass
class Facts:
    """What the rules read from the graph: constant values and shapes, producers, opset.

    ``batch``: the graph input that is tiled (its ``Shape(...)[0]`` is the symbol ``"B"``);
    ``samples``: the 1-element tensor holding S (symbol ``"S"``).
    """

    model: onnx.ModelProto
    batch: str = ""
    samples: str = ""
    values: dict[str, np.ndarray] = field(default_factory=dict)
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    constant: set[str] = field(default_factory=set)
    opset: int = 18

    def __post_init__(self) -> None:
        g = self.model.graph
        inputs = {i.name for i in g.input}
        for t in g.initializer:
            if t.name not in inputs:  # an initializer that is also an input can be overridden
                self.values[t.name] = numpy_helper.to_array(t)
        for n in g.node:
            for o in n.output:
                self.producer[o] = n
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.constant = set(self.values)
        for n in g.node:  # outputs of ops that read constants only (values unknown, shape known)
            if n.input and all(not i or i in self.constant for i in n.input) and _pure(n):
                self.constant.update(n.output)
        ops = self.model.opset_import
        self.opset = next((o.version for o in ops if o.domain in ("", "ai.onnx")), 18)
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, strict_mode=False)
        except Exception:  # noqa: BLE001 - without shapes every rule that needs one refuses
            inferred = onnx.ModelProto()
        for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            t = v.type.tensor_type
            if t.HasField("shape"):
                self.shapes[v.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim
                )
        for name, arr in self.values.items():
            self.shapes[name] = tuple(arr.shape)

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def ints(self, name: str) -> list[int] | None:
        """A constant integer tensor as a flat list, None when it is not a known constant."""
        v = self.values.get(name)
        if v is None or v.dtype.kind not in "iu":
            return None
        return [int(i) for i in v.reshape(-1)]

    def symbols(self, name: str, batched: set[str], depth: int = 0) -> list[_Sym] | None:
        """The value of a 1-D int64 shape tensor as symbols (``"N"``: axis 0 of a batched
        tensor, ``"B"``: the un-tiled batch, ``"S"``: the sample count), None when unknown."""
        if name == self.samples:
            return ["S"]
        if name in self.values:
            return self.ints(name)
        node = self.producer.get(name)
        if node is None or depth > 16:
            return None
        op, a = node.op_type, _attrs(node)
        if op == "Shape":
            src = node.input[0]
            dims: list[_Sym] = list(self.shapes.get(src, ()) or [])
            if not dims or src not in batched and src != self.batch:
                return None
            dims[0] = "N" if src in batched else "B"
            n = len(dims)
            return dims[_clamp(a.get("start", 0), n) : _clamp(a.get("end", n), n)]
        if op not in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Concat", "Gather", "Mul"):
            return None
        ins = [self.symbols(i, batched, depth + 1) for i in node.input]
        if any(i is None for i in ins):
            return None
        if op == "Concat":
            return [s for part in ins for s in part]
        if op == "Gather" and a.get("axis", 0) == 0:
            idx, n = self.ints(node.input[1]), len(ins[0])
            ok = idx is not None and all(-n <= i < n for i in idx)
            return [ins[0][i] for i in idx] if ok else None
        if op == "Mul":
            return [_times(ins[0][0], ins[1][0])] if len(ins[0]) == len(ins[1]) == 1 else None
        return ins[0] if len(ins[0]) == 1 else None


def _times(x: _Sym, y: _Sym) -> _Sym:
    if isinstance(x, int) and isinstance(y, int):
        return x * y
    return "N" if {x, y} == {"S", "B"} else None


def _clamp(i: int, n: int) -> int:
    return max(0, min(n, i + n if i < 0 else i))


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pure(node: onnx.NodeProto) -> bool:
    return node.op_type not in RANDOM_OPS and not subgraphs(node)


@dataclass(frozen=True)
class Rowwise:
    """A row-wise verdict: which outputs are batched (the rest keep one value for every row
    count: a ``CastLike`` of a constant), and for a ``Reshape`` the shape to use on the
    un-tiled rows (``[0, *rest]``, ``allowzero = 0``: axis 0 copied)."""

    batched: tuple[bool, ...]
    reshape: tuple[int, ...] | None = None


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _axes(node: onnx.NodeProto, facts: Facts, pos: int) -> list[int] | None:
    """The ``axes`` of a node, from its input ``pos`` (newer opsets) or its attribute."""
    if len(node.input) > pos and node.input[pos]:
        return facts.ints(node.input[pos])
    a = _attrs(node).get("axes")
    return None if a is None else list(a)


def _broadcast_ok(node: onnx.NodeProto, facts: Facts, batched: set[str]) -> bool:
    """Every operand batched (same rank) or constant, and no constant spans axis 0."""
    names = [i for i in node.input if i]
    ranks = {facts.rank(i) for i in names if i in batched}
    if len(ranks) != 1 or None in ranks:
        return False
    r = ranks.pop()
    for i in names:
        if i in batched:
            continue
        shape = facts.shapes.get(i)
        if i not in facts.constant or shape is None or len(shape) > r:
            return False
        if len(shape) == r and shape[0] != 1:
            return False
    return True


def _consts(node: onnx.NodeProto, facts: Facts, start: int = 1) -> bool:
    return all(not i or i in facts.constant for i in node.input[start:])


def _reshape(node: onnx.NodeProto, facts: Facts, batched: set[str]) -> Rowwise | None:
    """``[N, *d] -> [N, *rest]``: the shape's head is N (or -1 with the rest's product that of
    ``d``, or 0 copying axis 0); returns the shape to use on the un-tiled rows."""
    src = node.input[0]
    sym = facts.symbols(node.input[1], batched)
    dims = facts.shapes.get(src)
    if not sym or dims is None:
        return None
    keep0 = not _attrs(node).get("allowzero", 0)
    head, rest = sym[0], []
    for k, s in enumerate(sym[1:], start=1):
        if s == 0 and keep0:
            s = dims[k] if k < len(dims) else None
        if not isinstance(s, int) or s == 0 or s < -1:
            return None
        rest.append(s)
    if rest.count(-1) > 1:
        return None
    if head == -1:
        if -1 in rest or any(d is None for d in dims[1:]) or prod(rest) != prod(dims[1:]):
            return None
    elif not (head == "N" or head == 0 and keep0):
        return None
    return Rowwise((True,), (0, *rest))


def rowwise(node: onnx.NodeProto, facts: Facts, batched: set[str]) -> Rowwise | None:
    """The verdict for ``node``, one of whose inputs is in ``batched``; None when the node is
    not provably row-wise (then it stays on the tiled rows)."""
    op, a = node.op_type, _attrs(node)
    data = node.input[0] if node.input else ""
    r = facts.rank(data)
    single = (True,) * len(node.output)
    if not _pure(node) or node.domain not in ("", "ai.onnx"):
        return None
    if op == "CastLike":  # input 1 gives the dtype only
        if data in batched:
            return Rowwise((True,))
        return Rowwise((False,)) if data in facts.constant else None
    if op in _UNARY:
        return Rowwise(single) if data in batched and len(node.input) == 1 else None
    if op in _BROADCAST:
        return Rowwise(single) if _broadcast_ok(node, facts, batched) else None
    if data not in batched or r is None:
        return _embedding(node, facts, batched)
    if op in _SPATIAL or op == "MaxPool" and (len(node.output) == 1 or not node.output[1]):
        return Rowwise((True,)) if len(node.input) == 1 else None
    if op in _WEIGHTED or op == "BatchNormalization" and not a.get("training_mode", 0):
        return Rowwise((True,)) if _consts(node, facts) and len(node.output) == 1 else None
    if op in ("LayerNormalization",) and _norm(a.get("axis", -1), r) > 0:
        return Rowwise(single) if _consts(node, facts) else None
    if op == "Gemm":
        c = node.input[2] if len(node.input) > 2 else ""
        c_shape = facts.shapes.get(c) if c else ()
        c_ok = c_shape is not None and (len(c_shape) < 2 or c_shape[0] == 1)
        ok = not a.get("transA", 0) and _consts(node, facts) and c_ok
        return Rowwise((True,)) if ok else None
    if op == "MatMul":
        rb = facts.rank(node.input[1])
        ok = _consts(node, facts) and r >= 2 and rb is not None and rb <= r
        ok = ok and (rb < r or r == 2 or facts.shapes[node.input[1]][0] == 1)
        return Rowwise((True,)) if ok else None
    if op in _AXIS_NOT_0:
        default = 0
        if op in ("Softmax", "LogSoftmax", "Hardmax"):
            default = -1 if facts.opset >= 13 else 1
        if op == "Concat" and not all(i in batched for i in node.input):
            return None
        if op == "Split" and not _consts(node, facts):
            return None
        return Rowwise(single) if _norm(a.get("axis", default), r) != 0 else None
    if op in _REDUCE:
        axes = _axes(node, facts, 1)
        ok = bool(axes) and all(_norm(x, r) != 0 for x in axes)
        return Rowwise((True,)) if ok else None
    return _layout(node, facts, batched, r)


def _layout(node: onnx.NodeProto, facts: Facts, batched: set[str], r: int) -> Rowwise | None:
    """Reshapes and other data-movement ops that keep axis 0 in place."""
    op, a = node.op_type, _attrs(node)
    if op == "Reshape":
        return _reshape(node, facts, batched)
    if op == "Flatten":
        return Rowwise((True,)) if _norm(a.get("axis", 1), r) == 1 else None
    if op == "Transpose":
        perm = a.get("perm")
        return Rowwise((True,)) if perm is not None and perm[0] == 0 else None
    if op in ("Squeeze", "Unsqueeze"):
        axes = _axes(node, facts, 1)
        out_rank = r + len(axes or []) if op == "Unsqueeze" else r
        ok = bool(axes) and all(_norm(x, out_rank) != 0 for x in axes)
        return Rowwise((True,)) if ok else None
    if op == "Slice":
        axes = _axes(node, facts, 3)
        ok = axes is not None and len(node.input) > 3 and _consts(node, facts)
        return Rowwise((True,)) if ok and all(_norm(x, r) != 0 for x in axes) else None
    if op == "Gather":
        ok = _consts(node, facts) and _norm(a.get("axis", 0), r) != 0
        return Rowwise((True,)) if ok else None
    if op == "Pad":
        return Rowwise((True,)) if _pad_ok(node, facts, r) else None
    return None


def _pad_ok(node: onnx.NodeProto, facts: Facts, r: int) -> bool:
    if not _consts(node, facts) or len(node.input) < 2:
        return False
    pads = facts.ints(node.input[1])
    axes = _axes(node, facts, 3) if len(node.input) > 3 and node.input[3] else list(range(r))
    if pads is None or axes is None or len(pads) != 2 * len(axes):
        return False
    n = len(axes)
    return all(pads[k] == 0 and pads[k + n] == 0 for k, x in enumerate(axes) if _norm(x, r) == 0)


def _embedding(node: onnx.NodeProto, facts: Facts, batched: set[str]) -> Rowwise | None:
    """``Gather(table, ids)`` on axis 0 with a constant table: row i reads ids row i only."""
    ok = node.op_type == "Gather" and len(node.input) == 2 and node.input[1] in batched
    ok = ok and node.input[0] in facts.constant and _attrs(node).get("axis", 0) == 0
    return Rowwise((True,)) if ok else None
