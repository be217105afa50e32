"""How much of a compiled graph runs once per call and how much per MC sample (issue 21, item 4).

``split_report(model, batch, samples) -> SplitReport`` reads the ONNX structure only (no torch,
no session). A node runs **per sample** when

* it is a random op (``RandomUniformLike``, ``RandomNormal*``, ``Bernoulli``, ``Multinomial``)
  or reads, transitively, a tensor computed from one or from the ``num_samples`` input (the
  sample ``Expand``/``Tile`` of tiled-batch graphs is computed from ``num_samples``);
* it lies inside a ``Scan`` body (the sample loop: the body runs once per iteration, so its
  FLOPs count once per iteration, ``S`` times unless the scanned axis has another static
  length) or inside the body of a per-sample ``Loop`` (counted ``S`` times); the ``Scan`` /
  ``Loop`` node itself counts as one per-sample op;
* its output's leading dimension is ``S * B`` (a tiled batch) while it depends on the data input.

Every other node runs **once** per call (``frozen:K`` copies of a backbone are "once": their cost
does not grow with S, however many copies there are).

FLOPs (multiply and add counted as two, per call):

* ``Conv`` / ``ConvInteger`` / ``QLinearConv``: ``2 * numel(out) * Cin/group * kH * kW`` (the
  weight's trailing dims), i.e. ``2*Cin/group*kH*kW*Cout*outH*outW`` per output row;
* ``MatMul`` / ``Gemm`` / ``MatMulInteger`` / ``QLinearMatMul`` / ``QGemm``: ``2 * numel(out) * K``
  (``2*M*K*N`` per matrix product, batched dims included);
* elementwise math (``Add``, ``Mul``, activations, ``Softmax``, ``BatchNormalization``,
  ``Quantize``/``DequantizeLinear``, random ops, ...; :data:`ELEMENTWISE`): one per output
  element; reductions and pooling (:data:`REDUCING`): one per input element;
* everything else (shape arithmetic, ``Reshape``, ``Transpose``, ``Expand``, ``Tile``,
  ``Concat``, ``Gather``, ``Slice``, ``Cast``, ``Identity``, ...) is counted as zero FLOPs (but as
  an op).

Shapes come from ONNX Runtime's symbolic shape inference (ONNX's own, with data propagation,
when that fails) after the data inputs' leading
dimension is set to ``batch`` and ``num_samples`` is frozen to ``samples``. A dimension that
stays unknown is substituted by the contract's layout (DESIGN.md section 2): a leading dimension
is ``B`` for a once node and inside a sample-loop body, ``S*B`` for a per-sample tensor of the
outer graph computed from the data input (``S`` when the next dimension is ``B``,
``[S, B, ...]``) and ``S`` for one that is not (noise and weight draws, ``[S, ...]``); the output
of a matrix product or convolution is computed from its operands; other unknown dimensions are
taken from the node's first input at the same axis, else 1. ``notes`` says how many
FLOP-counted nodes needed a substitution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx
from onnx import helper

from .contract import NUM_SAMPLES
from .errors import ConfigError
from .onnxgraph import subgraphs
from .seeding import RANDOM_OPS

__all__ = ["ELEMENTWISE", "REDUCING", "SplitReport", "percent", "split_report"]

#: op type -> (index of the weight input whose trailing dims are the reduction per output)
_CONV_W = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
#: op type -> (index of A, index of B) of a matrix product
_MATMUL_AB = {
    "MatMul": (0, 1), "Gemm": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3),
    "QGemm": (0, 3), "MatMulIntegerToFloat": (0, 1), "DynamicQuantizeMatMul": (0, 1),
}  # fmt: skip
#: counted as one FLOP per output element
ELEMENTWISE = frozenset(
    {
        "Add", "Sub", "Mul", "Div", "Pow", "Neg", "Abs", "Sqrt", "Reciprocal", "Exp", "Log",
        "Sin", "Cos", "Tanh", "Sigmoid", "HardSigmoid", "Relu", "LeakyRelu", "PRelu", "Elu",
        "Selu", "Gelu", "Erf", "Softplus", "Softsign", "HardSwish", "Mish", "Clip", "Max", "Min",
        "Mean", "Sum", "Where", "Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual",
        "Not", "And", "Or", "Xor", "Floor", "Ceil", "Round", "Sign", "Softmax", "LogSoftmax",
        "BatchNormalization", "InstanceNormalization", "LayerNormalization", "QuantizeLinear",
        "DequantizeLinear", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
        *RANDOM_OPS,
    }
)  # fmt: skip
#: counted as one FLOP per input element
REDUCING = frozenset(
    {
        "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
        "ReduceLogSumExp", "ReduceSumSquare", "GlobalAveragePool", "GlobalMaxPool", "MaxPool",
        "AveragePool", "QLinearGlobalAveragePool", "QLinearAveragePool",
    }
)  # fmt: skip
_LOOPS = frozenset({"Scan", "Loop"})

Shape = tuple[int | None, ...] | None


@dataclass(frozen=True)
class SplitReport:
    """Ops and estimated FLOPs of one call at ``[batch, ...]`` input and ``samples`` MC samples.

    ``ops_*``: node counts (subgraph nodes included; a ``Scan`` body's nodes once each).
    ``flops_once``: FLOPs of the nodes that run once per call; ``flops_per_sample``: FLOPs of
    the per-sample nodes for the whole call (already multiplied by S). ``notes``: estimates made.
    """

    batch: int
    samples: int
    ops_once: int
    ops_per_sample: int
    flops_once: int
    flops_per_sample: int
    notes: tuple[str, ...] = ()

    @property
    def fraction_once(self) -> float:
        """Share of the call's FLOPs that run once (1.0 when nothing is counted)."""
        total = self.flops_once + self.flops_per_sample
        return self.flops_once / total if total else 1.0

    def summary(self) -> str:
        """One line, e.g. ``deterministic prefix: 97 % of FLOPs run once (12 of 40 ops);
        per-sample part: 3 % x S=32``."""
        ops = self.ops_once + self.ops_per_sample
        once = percent(self.fraction_once)
        rest = percent(1.0 - self.fraction_once)
        return (
            f"deterministic prefix: {once} % of FLOPs run once ({self.ops_once} of {ops} ops); "
            f"per-sample part: {rest} % x S={self.samples} "
            f"(batch {self.batch}, {_giga(self.flops_once + self.flops_per_sample)} per call)"
        )

    def to_dict(self) -> dict:
        """Plain JSON-ready data, ``fraction_once`` included."""
        return {
            "batch": self.batch, "samples": self.samples, "ops_once": self.ops_once,
            "ops_per_sample": self.ops_per_sample, "flops_once": self.flops_once,
            "flops_per_sample": self.flops_per_sample, "fraction_once": self.fraction_once,
            "notes": list(self.notes),
        }  # fmt: skip


def percent(x: float) -> str:
    """A share ``x`` in [0, 1] as a percentage: 97 / 99.6 / 0.4 / <0.1 / >99.9 (never 0 or 100
    for a share that is not exactly that)."""
    p = 100.0 * x
    if 0.0 < p < 0.1:
        return "<0.1"
    if 99.9 < p < 100.0:
        return ">99.9"
    return f"{p:.1f}" if 0.0 < p < 1.0 or 99.0 < p < 100.0 else f"{p:.0f}"


def _giga(flops: int) -> str:
    return f"{flops / 1e9:.3g} GFLOP" if flops >= 1e8 else f"{flops / 1e6:.3g} MFLOP"


def split_report(model: onnx.ModelProto, batch: int, samples: int) -> SplitReport:
    """Classify every node of ``model`` as run once per call or per MC sample; estimate FLOPs.

    ``model``: a compiled model (``input [B, *F]``, optional ``num_samples``) or any ONNX model
    (then every node not reached by a random op runs once); initializer data may be absent
    (loaded with ``load_external_data=False``): only shapes are read. ``batch``, ``samples``:
    the call's B and S (positive ints). Raises :class:`ConfigError` for non-positive values.
    """
    for name, v in (("batch", batch), ("samples", samples)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"split_report needs {name} >= 1, got {v!r}")
    inferred, notes = _inferred(model, batch, samples)
    walk = _Walk(batch, samples)
    walk.graph(inferred.graph, {}, set(), mult=1, forced=False, in_body=False)
    if walk.guessed:
        notes.append(f"{walk.guessed} FLOP-counted nodes had unknown dimensions (substituted)")
    return SplitReport(
        batch=batch,
        samples=samples,
        ops_once=walk.ops[False],
        ops_per_sample=walk.ops[True],
        flops_once=walk.flops[False],
        flops_per_sample=walk.flops[True],
        notes=tuple(notes),
    )


def _inferred(model: onnx.ModelProto, batch: int, samples: int) -> tuple[onnx.ModelProto, list]:
    """A copy with the data inputs' leading dim = ``batch``, ``num_samples`` a constant
    ``samples``, and inferred shapes (the copy uninferred when inference fails)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name for i in g.initializer}
    for inp in g.input:
        dims = inp.type.tensor_type.shape.dim
        if inp.name != NUM_SAMPLES and inp.name not in inits and len(dims) > 0:
            dims[0].Clear()
            dims[0].dim_value = batch
    if any(i.name == NUM_SAMPLES for i in g.input):
        keep = [i for i in g.input if i.name != NUM_SAMPLES]
        del g.input[:]
        g.input.extend(keep)
        others = [t for t in g.initializer if t.name != NUM_SAMPLES]
        del g.initializer[:]
        g.initializer.extend(others)
        g.initializer.append(helper.make_tensor(NUM_SAMPLES, onnx.TensorProto.INT64, [], [samples]))
    try:  # ONNX Runtime's symbolic inference follows Shape/ConstantOfShape/Expand chains
        return _symbolic(m)
    except Exception as exc:  # noqa: BLE001  an op it cannot infer: ONNX's own inference
        first = f"symbolic shape inference failed ({type(exc).__name__}); used ONNX's"
    try:
        return onnx.shape_inference.infer_shapes(m, data_prop=True), [first]
    except Exception as exc:  # noqa: BLE001  neither: count with the declared shapes
        return m, [first, f"ONNX shape inference failed ({type(exc).__name__}); declared shapes"]


def _symbolic(m: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """ONNX Runtime's symbolic shape inference, driven step by step as its ``infer_shapes``
    does, but keeping a partial result instead of raising (and of saving the model to
    ``sym_shape_infer_temp.onnx`` in the working directory, which ``infer_shapes`` does then).
    ``guess_output_rank``: contrib int8 ops it has no rule for (QGemm) keep their input's rank.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    ssi = SymbolicShapeInference(2**31 - 1, True, True, 0)
    ssi._preprocess(m)
    complete = False
    while ssi.run_:
        complete = ssi._infer_impl()
    ssi._update_output_from_vi()
    return ssi.out_mp_, ([] if complete else ["symbolic shape inference incomplete"])


def _shapes_of(graph: onnx.GraphProto) -> dict[str, Shape]:
    out: dict[str, Shape] = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim
            )
    for t in graph.initializer:
        out[t.name] = tuple(t.dims)
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = tuple(a.t.dims)
    return out


class _Walk:
    """Accumulates ops and FLOPs per class (``False``: once, ``True``: per sample)."""

    def __init__(self, batch: int, samples: int) -> None:
        self.batch, self.samples = batch, samples
        self.ops = {False: 0, True: 0}
        self.flops = {False: 0, True: 0}
        self.guessed = 0
        self.guess = False
        self.from_data = True  # whether the current node reads the data input (transitively)

    def graph(self, g, outer: dict, tainted: set, *, mult: int, forced: bool, in_body: bool):
        shapes = {**outer, **_shapes_of(g)}
        tainted = set(tainted)
        if not in_body:
            tainted.add(NUM_SAMPLES)
        inits = {t.name for t in g.initializer}
        data = {i.name for i in g.input if i.name not in inits and i.name != NUM_SAMPLES}
        for node in g.node:
            ins = [i for i in node.input if i]
            body_random = any(n.op_type in RANDOM_OPS for s in subgraphs(node) for n in s.node)
            per = forced or node.op_type in RANDOM_OPS or node.op_type == "Scan" or body_random
            per = per or any(i in tainted for i in ins) or any(i in tainted for i in _free(node))
            from_data = any(i in data for i in ins)
            if from_data:
                data.update(o for o in node.output if o)
            if not per and from_data and self.samples > 1 and not in_body:
                lead = [shapes.get(o) for o in node.output if o]
                per = any(s and s[0] == self.samples * self.batch for s in lead)
            if per:
                tainted.update(o for o in node.output if o)
            self.ops[per] += 1
            self.guess, self.from_data = False, from_data
            self._fill(node, shapes, per, in_body)
            self.flops[per] += mult * self._flops(node, shapes, per, in_body)
            self.guessed += self.guess
            for sub in subgraphs(node):
                if node.op_type in _LOOPS:
                    inner = mult * (self._iterations(node, shapes) if per else 1)
                    self.graph(sub, shapes, tainted, mult=inner, forced=per, in_body=True)
                else:
                    self.graph(sub, shapes, tainted, mult=mult, forced=per, in_body=in_body)

    def _iterations(self, node: onnx.NodeProto, shapes: dict) -> int:
        """Iterations of a per-sample Scan (its scanned axis when static, else S) or Loop (S)."""
        if node.op_type != "Scan":
            return self.samples
        m = next((a.i for a in node.attribute if a.name == "num_scan_inputs"), 0)
        first = shapes.get(node.input[len(node.input) - m]) if m else None
        return first[0] if first and first[0] else self.samples

    def _dims(self, name: str, shapes: dict, per: bool, in_body: bool, like: Shape = None):
        """Concrete dims of tensor ``name`` (unknowns substituted); ``None`` if rank unknown."""
        shape = shapes.get(name)
        if shape is None:
            if like is None:
                self.guess = True
                return None
            shape = tuple(None for _ in like)
        if all(d for d in shape):
            return list(shape)
        self.guess = True
        dims = list(shape)
        s, b = self.samples, self.batch
        tiled = per and not in_body
        for k, d in enumerate(dims):
            if d:
                continue
            if k == 0 and tiled and not self.from_data:  # noise drawn per sample: [S, ...]
                dims[0] = s
            elif k == 0:
                nxt = dims[1] if len(dims) > 1 else None
                two = tiled and len(dims) > 2 and nxt in (None, b)
                dims[0] = s if two else s * b if tiled else b
                if two and nxt is None:
                    dims[1] = b
            else:
                dims[k] = like[k] if like and k < len(like) and like[k] else 1
        return dims

    def _fill(self, node: onnx.NodeProto, shapes: dict, per: bool, in_body: bool) -> None:
        """Complete the first output's shape where inference left it unknown (in ``shapes``, so
        later nodes read it): matrix products and convolutions from their operands, other ops
        by :meth:`_dims` with the first input as the model."""
        out = node.output[0] if node.output else ""
        shape = shapes.get(out)
        if not out or (shape is not None and all(shape)):
            return
        first = None
        if node.input and node.input[0]:
            first = self._dims(node.input[0], shapes, per, in_body)
        dims = _formula(node, shapes, first) if first is not None else None
        if dims is not None:
            self.guess = True
        else:
            dims = self._dims(out, shapes, per, in_body, like=first)
        if dims is not None:
            shapes[out] = tuple(dims)

    def _flops(self, node: onnx.NodeProto, shapes: dict, per: bool, in_body: bool) -> int:
        op = node.op_type
        counted = op in _CONV_W or op in _MATMUL_AB or op in ELEMENTWISE or op in REDUCING
        if not counted or not node.output or not node.input:
            return 0
        first = self._dims(node.input[0], shapes, per, in_body)
        if op in REDUCING:
            return math.prod(first) if first is not None else 0
        out = self._dims(node.output[0], shapes, per, in_body, like=first)
        if out is None:
            return 0
        if op in _CONV_W:
            w = shapes.get(node.input[_CONV_W[op]]) if len(node.input) > _CONV_W[op] else None
            if not w or not all(w[1:]):
                self.guess = True
                return 0
            return 2 * math.prod(out) * math.prod(w[1:])
        if op in _MATMUL_AB:
            return 2 * math.prod(out) * self._k(node, shapes, first)
        return math.prod(out)

    def _k(self, node: onnx.NodeProto, shapes: dict, a: list | None) -> int:
        """The reduction length K of a matrix product."""
        ia, ib = _MATMUL_AB[node.op_type]
        trans = {x.name: x.i for x in node.attribute if x.name in ("transA", "transB")}
        if a and node.op_type in ("Gemm", "QGemm"):
            return a[0] if trans.get("transA") else a[-1]
        if a and a[-1]:
            return a[-1]
        b = shapes.get(node.input[ib]) if len(node.input) > ib else None
        if b and len(b) >= 2:
            k = b[-1] if trans.get("transB") else b[-2]
            if k:
                return k
        self.guess = True
        return 1


def _formula(node: onnx.NodeProto, shapes: dict, a: list[int]) -> list[int] | None:
    """The output shape of a matrix product or convolution from its (completed) first input
    ``a`` and its weight's shape; ``None`` for other ops or when an operand is unknown."""
    op = node.op_type
    attrs = {x.name: x for x in node.attribute}
    if op in _MATMUL_AB:
        ib = _MATMUL_AB[op][1]
        b = shapes.get(node.input[ib]) if len(node.input) > ib else None
        if not b or not all(b) or len(a) < 1:
            return None
        if op in ("Gemm", "QGemm"):
            t = {k: attrs[k].i if k in attrs else 0 for k in ("transA", "transB")}
            if len(a) != 2 or len(b) != 2:
                return None
            return [a[1] if t["transA"] else a[0], b[0] if t["transB"] else b[1]]
        if len(b) == 1:
            return a[:-1]
        lead = max(len(a) - 2, len(b) - 2)
        ba = [1] * (lead - len(a) + 2) + a[:-2]
        bb = [1] * (lead - len(b) + 2) + list(b[:-2])
        rows = [a[-2]] if len(a) >= 2 else []
        return [max(x, y) for x, y in zip(ba, bb, strict=True)] + rows + [b[-1]]
    if op in _CONV_W:
        w = shapes.get(node.input[_CONV_W[op]]) if len(node.input) > _CONV_W[op] else None
        if not w or not all(w) or len(a) != len(w):
            return None
        n = len(w) - 2
        ints = {k: list(attrs[k].ints) for k in ("strides", "pads", "dilations") if k in attrs}
        strides, dil = ints.get("strides", [1] * n), ints.get("dilations", [1] * n)
        pads = ints.get("pads", [0] * 2 * n)
        same = attrs["auto_pad"].s.startswith(b"SAME") if "auto_pad" in attrs else False
        spatial = [
            -(-a[2 + i] // strides[i]) if same
            else (a[2 + i] + pads[i] + pads[n + i] - dil[i] * (w[2 + i] - 1) - 1) // strides[i] + 1
            for i in range(n)
        ]  # fmt: skip
        return [a[0], w[0], *spatial]
    return None


def _free(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read from the enclosing scope (its implicit inputs)."""
    names: set[str] = set()
    for sub in subgraphs(node):
        local = {i.name for i in sub.input} | {t.name for t in sub.initializer}
        for n in sub.node:
            names.update(i for i in n.input if i and i not in local)
            local.update(n.output)
            names |= _free(n) - local
    return names
