"""The sample loop as batched ops over the sample axis (issue 21, items 1 and 6).

After :class:`~qbnn.exporters.passes.scan_licm.ScanLICM` the ``Scan`` of a network with a
Bayesian head holds only the head: ``Gemm(features, W_s, b_s)`` (+ activations, a ``Reshape``),
with the per-sample weights ``W [S, O, F]`` scanned and the frontier features ``[B, F]`` a
pass-through state. ONNX Runtime's ``Scan`` costs tens of microseconds per iteration, most of
the per-sample cost of so small a body. :class:`ScanBatch` replaces such a Scan by the same
computation on all S samples at once, every per-sample tensor ``t`` of shape ``[*d]`` becoming
a *batched* tensor ``[S, *d]`` (exactly the Scan's stacked output layout), every value that is
the same in all iterations (pass-through states, body constants) staying as it is:

* ``Gemm(A, B, C)`` (alpha = beta = 1) -> ``MatMul(A', B')`` (+ ``Add(., C')``), where ``A'`` /
  ``B'`` are ``Transpose``d (``[1, 0]``, or ``[0, 2, 1]`` when batched) for ``transA`` /
  ``transB``; an unbatched ``[B, F]`` operand broadcasts against ``[S, F, O]`` to ``[S, B, O]``;
* ``MatMul`` (operands of rank >= 2), ``Add``/``Sub``/``Mul``/``Div``/``Pow``/``Max``/``Min``/
  ``Sum``/``Mean``: a batched operand of lower per-sample rank than the result is
  ``Unsqueeze``d after the sample axis, so numpy broadcasting never aligns S with another axis;
* unary elementwise ops (activations, ``Cast``, ``Clip`` with unbatched bounds) as they are;
  ``Softmax``/``LogSoftmax``/``Hardmax`` and ``Transpose`` with the axis shifted by one;
  ``Reshape`` to a constant target ``t`` -> ``Reshape`` to ``[0, *t]`` (``allowzero`` 0; a
  literal 0 under ``allowzero`` 1 declines); ``Identity`` as an alias;
* nodes that read no batched value (constant helpers) are computed once, as they are.

The pass **declines** a Scan (leaves it unchanged) unless it can prove the result equal: any
other op in the body (``Conv``, ``BatchNormalization``, ``Flatten``, random ops, ...), a node
with a subgraph or outside the default domain, a loop state the body changes, a reverse
direction or a non-zero axis, an opset below 13, a rank it cannot tell where broadcasting needs
it, a per-sample output that does not depend on a scanned input. The reason is logged at DEBUG
level (logger ``qbnn.exporters.passes.scan_batch``). A pass-through state's final value, when
read, becomes an ``Identity`` of the state's initial value. The Scan's stacked outputs keep
their names and equal the new tensors up to floating-point summation order.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qbnn.runtimes.onnxgraph import iter_graphs, subgraphs
from qbnn.runtimes.seeding import RANDOM_OPS

from .base import PassResult

__all__ = ["ScanBatch"]

log = logging.getLogger(__name__)

_UNARY = frozenset(
    {
        "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Erf",
        "Softplus", "Softsign", "Elu", "Selu", "Celu", "LeakyRelu", "HardSigmoid", "HardSwish",
        "Gelu", "Mish", "ThresholdedRelu", "Sin", "Cos", "Floor", "Ceil", "Sign", "Cast", "Clip",
    }
)  # fmt: skip
_NARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean"})
_AXIS = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
_MATMUL = frozenset({"Gemm", "MatMul"})
#: Scan attributes the pass understands (anything else declines)
_SCAN_ATTRS = frozenset(
    {
        "body", "num_scan_inputs", "scan_input_directions", "scan_output_directions",
        "scan_input_axes", "scan_output_axes",
    }
)  # fmt: skip
_SUFFIX = "/in_loop"  # self_contained_scans' name for a body copy of an outer initializer


class _Decline(Exception):
    """Why a Scan stays a Scan."""


class _Names:
    """Fresh-name allocator over a set of taken names."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


class _T:
    """A body tensor seen from outside: its outer ``name``, whether it carries a leading
    sample axis (``batched``), and its per-sample ``rank`` (None: unknown)."""

    __slots__ = ("batched", "name", "rank")

    def __init__(self, name: str, batched: bool, rank: int | None) -> None:
        self.name, self.batched, self.rank = name, batched, rank


def _attr(node: onnx.NodeProto, name: str, default=None):
    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else helper.get_attribute_value(a)


def _rank(info: onnx.ValueInfoProto | None) -> int | None:
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    return len(info.type.tensor_type.shape.dim)


def _const_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node (None for sparse or string forms)."""
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_int", "value_ints", "value_float", "value_floats"):
            return np.asarray(helper.get_attribute_value(a))
    return None


class _Batcher:
    """Builds the batched replacement of one top-level Scan; raises :class:`_Decline`."""

    def __init__(self, graph: onnx.GraphProto, scan: onnx.NodeProto, names, node_names):
        self.graph, self.scan = graph, scan
        self.names, self.node_names = names, node_names
        self.body: onnx.GraphProto = _attr(scan, "body")
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.env: dict[str, _T] = {}
        self.consts: dict[str, np.ndarray] = {}
        self.axes: dict[tuple[int, ...], str] = {}

    # --- checks and the loop's interface

    def _check_scan(self) -> int:
        scan, body = self.scan, self.body
        extra = {a.name for a in scan.attribute} - _SCAN_ATTRS
        if extra:
            raise _Decline(f"unknown Scan attributes {sorted(extra)}")
        m = _attr(scan, "num_scan_inputs", 0)
        n = len(scan.input) - m
        if m < 1 or n < 0 or len(body.input) != len(scan.input):
            raise _Decline(f"{m} scanned inputs for {len(scan.input)} inputs")
        if len(body.output) != len(scan.output):
            raise _Decline("the Scan leaves some body outputs unnamed")
        for key in ("scan_input_directions", "scan_output_directions"):
            if any(_attr(scan, key, [])):
                raise _Decline(f"a reverse direction in {key}={_attr(scan, key)}")
        for key in ("scan_input_axes", "scan_output_axes"):
            if any(_attr(scan, key, [])):
                raise _Decline(f"a non-zero axis in {key}={_attr(scan, key)}")
        return n

    def _check_states(self, n: int) -> None:
        body = self.body
        producer = {o: node for node in body.node for o in node.output}
        for k in range(n):
            name_in, name_out = body.input[k].name, body.output[k].name
            node = producer.get(name_out)
            same = name_out == name_in and node is None
            ident = node is not None and node.op_type == "Identity" and node.input == [name_in]
            if not (same or ident):
                raise _Decline(f"loop state {k} ('{name_in}') changes between iterations")

    def _get(self, name: str) -> _T:
        """The outer view of a body tensor read by a node (body initializers copied out)."""
        if name in self.env:
            return self.env[name]
        init = next((t for t in self.body.initializer if t.name == name), None)
        if init is not None:
            base = name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else name
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = self.names.fresh(base)
            self.inits.append(copy)
            self.consts[name] = numpy_helper.to_array(init)
            t = _T(copy.name, False, len(init.dims))
        else:  # an outer-scope value: the same in every iteration
            g = self.graph
            info = next((v for v in [*g.input, *g.value_info, *g.output] if v.name == name), None)
            init = next((t for t in g.initializer if t.name == name), None)
            rank = len(init.dims) if init is not None else _rank(info)
            if init is not None:
                self.consts[name] = numpy_helper.to_array(init)
            t = _T(name, False, rank)
        self.env[name] = t
        return t

    # --- emission helpers

    def _emit(self, op: str, inputs: list[str], base: str, out: str | None = None, **attrs):
        out = out or self.names.fresh(f"{base}/batched")
        name = self.node_names.fresh(f"{self.scan.name}/batched/{base}")
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def _int64(self, values, base: str) -> str:
        name = self.names.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def _lift(self, t: _T, rank: int, base: str) -> str:
        """A batched tensor of per-sample rank ``t.rank`` unsqueezed to per-sample ``rank``
        (new axes right after the sample axis); an unbatched one as it is."""
        if not t.batched or t.rank == rank:
            return t.name
        axes = tuple(range(1, rank - t.rank + 1))
        if axes not in self.axes:
            self.axes[axes] = self._int64(list(axes), f"{self.scan.name}/batched/axes")
        return self._emit("Unsqueeze", [t.name, self.axes[axes]], f"{base}/unsqueeze")

    def _transpose(self, t: _T, base: str) -> str:
        perm = [0, 2, 1] if t.batched else [1, 0]
        return self._emit("Transpose", [t.name], f"{base}/transpose", perm=perm)

    # --- ops

    def _node(self, node: onnx.NodeProto, out: str | None) -> _T:
        if node.domain not in ("", "ai.onnx") or subgraphs(node):
            raise _Decline(f"{node.op_type} '{node.name}' holds a subgraph or a custom domain")
        if len(node.output) != 1:
            raise _Decline(f"{node.op_type} '{node.name}' has {len(node.output)} outputs")
        ins = [self._get(i) if i else None for i in node.input]
        base = node.name or node.op_type
        if not any(t is not None and t.batched for t in ins):
            return self._invariant(node, ins, out)
        op = node.op_type
        if op == "Identity" and out is None:
            return ins[0]
        if op in _UNARY or op == "Identity":
            if any(t is not None and t.batched for t in ins[1:]):
                raise _Decline(f"{op} '{node.name}' reads a per-sample bound")
            return self._copy(node, ins, out, ins[0].rank)
        if op in _NARY:
            return self._nary(node, ins, out, base)
        if op in _MATMUL:
            return self._gemm(node, ins, out, base)
        if op in _AXIS:
            axis = _attr(node, "axis", -1)
            return self._copy(node, ins, out, ins[0].rank, axis=axis + 1 if axis >= 0 else axis)
        if op == "Transpose":
            return self._transposed(node, ins, out)
        if op == "Reshape":
            return self._reshape(node, ins, out, base)
        raise _Decline(f"{op} '{node.name}' in the body")

    def _copy(self, node, ins, out, rank, **attrs) -> _T:
        """``node`` on the outer names of ``ins``, attributes overridden by ``attrs``."""
        c = onnx.NodeProto()
        c.CopyFrom(node)
        c.name = self.node_names.fresh(f"{self.scan.name}/batched/{node.name or node.op_type}")
        c.input[:] = [t.name if t is not None else "" for t in ins]
        c.output[:] = [out or self.names.fresh(f"{node.output[0]}/batched")]
        kept = [a for a in c.attribute if a.name not in attrs]
        del c.attribute[:]
        c.attribute.extend([*kept, *(helper.make_attribute(k, v) for k, v in attrs.items())])
        self.nodes.append(c)
        batched = any(t is not None and t.batched for t in ins)
        return _T(c.output[0], batched, rank)

    def _invariant(self, node, ins, out) -> _T:
        """A node that reads no batched value runs once, as it is (never a random op: its
        draws differ per iteration)."""
        if out is not None:
            raise _Decline(f"per-sample output '{node.output[0]}' does not vary between samples")
        op = node.op_type
        if op in RANDOM_OPS or op == "Dropout":
            raise _Decline(f"random op '{node.name}' in the body")
        if op == "Identity":
            return ins[0]
        if op == "Constant":
            value = _const_value(node)
            t = self._copy(node, ins, None, None if value is None else value.ndim)
            if value is not None:
                self.consts[node.output[0]] = value
            return t
        known = [t.rank for t in ins if t is not None]
        rank = max(known) if op in _UNARY | _NARY and None not in known and known else None
        return self._copy(node, ins, None, rank)

    def _ranks(self, node, ins) -> list[int]:
        ranks = [t.rank for t in ins if t is not None]
        if None in ranks:
            raise _Decline(f"{node.op_type} '{node.name}': an operand's rank is unknown")
        return ranks

    def _nary(self, node, ins, out, base) -> _T:
        rank = max(self._ranks(node, ins))
        lifted = [_T(self._lift(t, rank, base), t.batched, rank) for t in ins]
        return self._copy(node, lifted, out, rank)

    def _gemm(self, node, ins, out, base) -> _T:
        op = node.op_type
        if op == "MatMul":
            ranks = self._ranks(node, ins)
            if min(ranks) < 2:
                raise _Decline(f"MatMul '{node.name}' with a 1-D operand")
            rank = max(ranks)
            a, b = (self._lift(t, rank, base) for t in ins)
            return _T(self._emit("MatMul", [a, b], base, out), True, rank)
        if _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
            raise _Decline(f"Gemm '{node.name}' with alpha or beta != 1")
        a, b = ins[0], ins[1]
        c = ins[2] if len(ins) > 2 else None
        a_name = self._transpose(a, f"{base}/A") if _attr(node, "transA", 0) else a.name
        b_name = self._transpose(b, f"{base}/B") if _attr(node, "transB", 0) else b.name
        if c is None:
            return _T(self._emit("MatMul", [a_name, b_name], base, out), True, 2)
        y = self._emit("MatMul", [a_name, b_name], base)
        if c.batched and c.rank is None:
            raise _Decline(f"Gemm '{node.name}': the rank of its per-sample C is unknown")
        c_name = self._lift(c, 2, f"{base}/C")
        return _T(self._emit("Add", [y, c_name], f"{base}/bias", out), True, 2)

    def _transposed(self, node, ins, out) -> _T:
        perm = _attr(node, "perm")
        if perm is None:
            if ins[0].rank is None:
                raise _Decline(f"Transpose '{node.name}' without perm on an unknown rank")
            perm = list(reversed(range(ins[0].rank)))
        return self._copy(node, ins, out, len(perm), perm=[0, *(p + 1 for p in perm)])

    def _reshape(self, node, ins, out, base) -> _T:
        data, shape = ins[0], ins[1]
        target = self.consts.get(node.input[1])
        if shape.batched or target is None:
            raise _Decline(f"Reshape '{node.name}' to a shape that is not a constant")
        target = np.asarray(target, np.int64).reshape(-1)
        if _attr(node, "allowzero", 0) and (target == 0).any():
            raise _Decline(f"Reshape '{node.name}' to a literal 0 dimension (allowzero)")
        new = self._int64([0, *target.tolist()], f"{base}/shape")
        y = self._emit("Reshape", [data.name, new], base, out)
        return _T(y, True, len(target))

    # --- the whole loop

    def build(self, outer_reads: set[str]) -> list[onnx.NodeProto]:
        """The nodes replacing the Scan (initializers in ``self.inits``)."""
        n = self._check_scan()
        self._check_states(n)
        scan, body = self.scan, self.body
        for k, info in enumerate(body.input):
            self.env[info.name] = _T(scan.input[k], k >= n, _rank(info))
        wanted: dict[str, str] = {}  # body tensor -> the Scan output name it must get
        for k in range(n, len(body.output)):
            if scan.output[k]:
                wanted.setdefault(body.output[k].name, scan.output[k])
        produced = {o for node in body.node for o in node.output}
        for node in body.node:
            out = wanted.get(node.output[0]) if node.output else None
            self.env[node.output[0]] = self._node(node, out)
        for k in range(n, len(body.output)):
            name, target = body.output[k].name, scan.output[k]
            if not target:
                continue
            t = self._get(name)
            if not t.batched:
                raise _Decline(f"per-sample output '{name}' does not vary between samples")
            if t.name != target:  # a scanned input or a tensor output twice: alias it
                self._emit("Identity", [t.name], f"{name}/output", target)
            elif name not in produced:
                raise _Decline(f"per-sample output '{name}' is not computed by the body")
        for k in range(n):
            if scan.output[k] and scan.output[k] in outer_reads:
                self._emit("Identity", [scan.input[k]], f"state_{k}/final", scan.output[k])
        used = {i for node in self.nodes for i in node.input}
        self.inits = [t for t in self.inits if t.name in used]  # Reshape targets read as values
        return self.nodes


def _all_names(model: onnx.ModelProto) -> set[str]:
    names: set[str] = set()
    for g in iter_graphs(model.graph):
        names.update(t.name for t in g.initializer)
        names.update(v.name for v in [*g.input, *g.output, *g.value_info])
        for node in g.node:
            names.update(node.input)
            names.update(node.output)
            names.add(node.name)
    names.discard("")
    return names


def _reads(graph: onnx.GraphProto) -> set[str]:
    """Names read in ``graph`` (subgraphs' outer-scope references included) or output by it."""
    out = {o.name for o in graph.output}
    for g in iter_graphs(graph):
        for node in g.node:
            out.update(node.input)
    return out


def _tidy(graph: onnx.GraphProto, dropped: set[str]) -> None:
    """Remove the initializers among ``dropped`` (the Scan's inputs) nothing reads now, and
    value_info entries of tensors nothing produces now."""
    reads = _reads(graph)
    inputs = {i.name for i in graph.input}
    inits = [t for t in graph.initializer if t.name in reads | inputs or t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    made = {o for node in graph.node for o in node.output} | inputs
    made |= {t.name for t in graph.initializer}
    infos = [v for v in graph.value_info if v.name in made]
    del graph.value_info[:]
    graph.value_info.extend(infos)


class ScanBatch:
    """Replaces every top-level ``Scan`` whose body is batchable along the sample axis by the
    equivalent batched ops (see the module docstring for what is batchable and how).

    ``__call__(model)`` edits ``model`` in place and returns it in a :class:`PassResult`,
    ``modified`` when any Scan was replaced, one note per replaced Scan. Preconditions: any
    valid ONNX model (opset >= 13); run after ``ScanLICM`` so that the body holds only the
    per-sample part. Postconditions: the Scan's outputs keep their names and values (stacked
    ``[S, ...]``, up to summation order); a declined Scan is left byte-for-byte unchanged.
    """

    name = "scan_batch"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        if not any(n.op_type == "Scan" for n in graph.node):
            return PassResult(model, False)
        if opset < 13:
            log.debug("scan_batch: opset %d < 13, sample loops left as they are", opset)
            return PassResult(model, False)
        names = _Names(_all_names(model))
        notes: list[str] = []
        si = 0
        while si < len(graph.node):
            scan = graph.node[si]
            if scan.op_type != "Scan" or scan.domain not in ("", "ai.onnx"):
                si += 1
                continue
            others = onnx.GraphProto()
            others.node.extend(n for i, n in enumerate(graph.node) if i != si)
            others.output.extend(graph.output)
            batcher = _Batcher(graph, scan, names, names)
            try:
                new = batcher.build(_reads(others))
            except _Decline as why:
                log.debug("scan_batch: sample loop '%s' kept: %s", scan.name, why)
                si += 1
                continue
            count, mm = len(batcher.body.node), any(n.op_type == "MatMul" for n in new)
            dropped, scan_name = set(scan.input), scan.name
            del graph.node[si]
            for k, node in enumerate(new):
                graph.node.insert(si + k, node)
            graph.initializer.extend(batcher.inits)
            _tidy(graph, dropped)
            si += len(new)
            how = "batched MatMul" if mm else "batched ops"
            notes.append(
                f"{self.name}: sample loop '{scan_name}' ({count} ops) runs as {how} over S"
            )
        return PassResult(model, bool(notes), tuple(notes))
