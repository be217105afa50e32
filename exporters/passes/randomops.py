"""Every random op of an exported graph is one qbnn owns: ``RandomUniformLike`` (seeded, named).

qbnn draws all of its noise from ``RandomUniformLike``: it is the random op that computes
correctly on every runtime qbnn targets (ONNX Runtime's OpenVINO EP computes
``RandomNormalLike`` wrongly, see DESIGN.md section 7), the runtimes give every such node a
distinct seed (:func:`qbnn.runtimes.seeding.reseed`) and the exporter names it
``qbnn/random/<i>``. A user's forward can emit other random ops, which the posterior would
then silently lose or get wrong:

* ``Dropout`` with ``training_mode=True`` (``nn.LSTM(num_layers=2, dropout=p)`` in an MC-dropout
  model, ``torch.dropout`` called past ``F.dropout``): unseeded, and ONNX Runtime's default
  graph optimizations delete it, so that part of the posterior vanishes;
* ``RandomNormal`` / ``RandomNormalLike`` (``torch.randn_like``, ``torch.randn``,
  ``torch.normal``), ``RandomUniform`` (``torch.rand(shape)``), ``Bernoulli``
  (``torch.bernoulli``).

:func:`own_random_ops` rewrites each of these, in the main graph and in every ``Scan`` /
``Loop`` / ``If`` body, into ``RandomUniformLike``-based nodes with the same distribution
(Box-Muller normals as in :mod:`qbnn.exporters.modules.noise`, ``u < p`` Bernoulli draws, inverted-
dropout masks ``(u >= ratio) / (1 - ratio)``); an op it cannot rewrite (``Multinomial``, a
``Dropout`` whose ratio or training flag is computed at run time) is refused naming the op and
the module it came from. :func:`check_random_ops` is the graph-level guard run on every
finished export: any random op that is not an owned ``RandomUniformLike`` raises.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qbnn.runtimes.errors import ExportError, UnsupportedLayerError
from qbnn.runtimes.seeding import RANDOM_OPS

from .base import PassResult

__all__ = [
    "OWNED_OP",
    "CheckRandomOps",
    "OwnRandomOps",
    "check_random_ops",
    "foreign_random_ops",
    "own_random_ops",
]

OWNED_OP = "RandomUniformLike"
_REWRITTEN = ("Dropout", "RandomNormalLike", "RandomNormal", "RandomUniform", "Bernoulli")
_REFUSED = {
    "Multinomial": "torch.multinomial / categorical sampling has no portable rewrite yet; "
    "sample the category outside the model or draw it as argmax(logits + Gumbel noise built "
    "from torch.rand_like)"
}


def _source(node: onnx.NodeProto) -> str:
    """``module 'lstm' (LSTM, aten.lstm.input)`` from torch.onnx's per-node metadata."""
    meta = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        classes = ast.literal_eval(meta.get("pkg.torch.onnx.class_hierarchy", "[]"))
    except (ValueError, SyntaxError):
        scopes, classes = [], []
    if not classes or len(scopes) != len(classes):
        return "the model's forward"
    aten = classes[-1]
    # scopes / classes run from the export wrapper down to the op: skip qbnn's own wrappers
    mods = list(zip(scopes[:-1], classes[:-1], strict=True))
    user = [i for i, (_, c) in enumerate(mods) if not c.startswith("qbnn.")]
    if not user:
        return f"the model's forward ({aten})"
    root, last = mods[user[0]][0], mods[-1][0]  # scopes are full module paths
    path = last[len(root) + 1 :] if root else last
    kind = mods[-1][1].rpartition(".")[2]
    if path:
        return f"module '{path}' ({kind}, {aten})"
    return f"the forward of {kind} ({aten})"


class _Builder:
    """Appends nodes with unique ``qbnn/own/<k>/...`` names and output names."""

    def __init__(self, k: int) -> None:
        self.prefix = f"qbnn/own/{k}"
        self.nodes: list[onnx.NodeProto] = []
        self._n = 0

    def __call__(self, op: str, inputs: list[str], outputs: list[str] | None = None, **attrs):
        self._n += 1
        outs = outputs or [f"{self.prefix}/{op}_{self._n}"]
        self.nodes.append(
            helper.make_node(op, inputs, outs, name=f"{self.prefix}/{op}_{self._n}", **attrs)
        )
        return outs[0]

    def const(self, value, dtype=np.float32) -> str:
        arr = np.asarray(value, dtype=dtype)
        return self("Constant", [], value=numpy_helper.from_array(arr, "v"))

    def like(self, value: float, ref: str) -> str:
        """A scalar float constant cast to the type of ``ref``."""
        return self("CastLike", [self.const(value), ref])


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _uniform(b: _Builder, template: str, attrs: dict, dtype_key: str = "dtype") -> str:
    kw = {"dtype": attrs[dtype_key]} if dtype_key in attrs else {}
    return b(OWNED_OP, [template], **kw)


def _box_muller(b: _Builder, template: str, attrs: dict, out: str) -> None:
    """``mean + scale * sqrt(-2 ln(1 - u1)) cos(2 pi u2)`` with ``u1, u2 ~ U[0, 1)``."""
    u1, u2 = _uniform(b, template, attrs), _uniform(b, template, attrs)
    r = b("Sqrt", [b("Mul", [b.like(-2.0, u1), b("Log", [b("Sub", [b.like(1.0, u1), u1])])])])
    n = b("Mul", [r, b("Cos", [b("Mul", [b.like(2.0 * math.pi, u2), u2])])])
    scaled = b("Mul", [n, b.like(float(attrs.get("scale", 1.0)), n)])
    b("Add", [scaled, b.like(float(attrs.get("mean", 0.0)), n)], [out])


def _shape_template(b: _Builder, attrs: dict) -> str:
    dims = [int(d) for d in attrs["shape"]]
    value = helper.make_tensor("v", attrs.get("dtype", TensorProto.FLOAT), [1], [0])
    return b("ConstantOfShape", [b.const(dims, np.int64)], value=value)


def _dropout(b: _Builder, node, consts, where: str) -> bool:
    """Rewrite a training-mode Dropout; False (left alone) for an inference-mode one."""
    inputs = list(node.input) + [""] * (3 - len(node.input))
    data, ratio_in, train_in = inputs[:3]
    if not train_in:
        return False
    train, ratio = consts.get(train_in), consts.get(ratio_in) if ratio_in else np.array(0.5)
    if train is None or ratio is None:
        raise UnsupportedLayerError(
            f"a Dropout from {where} has a ratio or training flag computed at run time; qbnn "
            "rewrites dropout with a constant rate only: use a fixed p"
        )
    if not bool(np.asarray(train).reshape(-1)[0]):
        return False
    p = float(np.asarray(ratio).reshape(-1)[0])
    u = b(OWNED_OP, [data], dtype=TensorProto.FLOAT)
    keep = b("GreaterOrEqual", [u, b.const(p)])
    mask = b("CastLike", [keep, data])
    scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    b("Mul", [b("Mul", [data, mask]), b.like(scale, data)], [node.output[0]])
    if len(node.output) > 1 and node.output[1]:
        b("Identity", [keep], [node.output[1]])
    return True


def _rewrite(node: onnx.NodeProto, consts, k: int) -> list[onnx.NodeProto] | None:
    """Replacement nodes for ``node``, None when it is not a foreign random op."""
    op, attrs, b = node.op_type, _attrs(node), _Builder(k)
    where = _source(node)
    if op in _REFUSED:
        raise UnsupportedLayerError(
            f"the random op {op} from {where} cannot be exported: {_REFUSED[op]}"
        )
    if op == "Dropout":
        return b.nodes if _dropout(b, node, consts, where) else None
    if op == "RandomNormalLike":
        _box_muller(b, node.input[0], attrs, node.output[0])
    elif op == "RandomNormal":
        _box_muller(b, _shape_template(b, attrs), attrs, node.output[0])
    elif op == "RandomUniform":
        kw = {n: attrs[n] for n in ("low", "high", "dtype") if n in attrs}
        b(OWNED_OP, [_shape_template(b, attrs)], [node.output[0]], **kw)
    elif op == "Bernoulli":
        u = b(OWNED_OP, [node.input[0]])
        hit = b("Less", [u, node.input[0]])
        if "dtype" in attrs:
            b("Cast", [hit], [node.output[0]], to=attrs["dtype"])
        else:
            b("CastLike", [hit, node.input[0]], [node.output[0]])
    else:
        return None
    return b.nodes


def _constants(graph: onnx.GraphProto, outer: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(outer)
    out.update({t.name: numpy_helper.to_array(t) for t in graph.initializer})
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def _own_graph(graph: onnx.GraphProto, outer: dict, notes: list[str], counter: list[int]) -> None:
    consts = _constants(graph, outer)
    new: list[onnx.NodeProto] = []
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _own_graph(a.g, consts, notes, counter)
        foreign = node.op_type in _REWRITTEN or node.op_type in _REFUSED
        repl = _rewrite(node, consts, counter[0]) if foreign else None
        if repl is None:
            new.append(node)
            continue
        counter[0] += 1
        notes.append(f"{node.op_type} from {_source(node)} rewritten to qbnn's {OWNED_OP} noise")
        new.extend(repl)
    del graph.node[:]
    graph.node.extend(new)


def own_random_ops(model: onnx.ModelProto) -> list[str]:
    """Rewrite every foreign random op (see module docstring) in place, subgraphs included;
    returns one note per rewritten op. Run it on torch.onnx's output, before its per-node
    metadata (which names the source module) is stripped.

    Raises :class:`UnsupportedLayerError` naming the op and its module for ops without a
    rewrite.
    """
    notes: list[str] = []
    _own_graph(model.graph, {}, notes, [0])
    return notes


def _walk(graph: onnx.GraphProto, consts: dict):
    consts = _constants(graph, consts)
    for node in graph.node:
        yield node, consts
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _walk(a.g, consts)


def foreign_random_ops(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Random nodes (subgraphs included) qbnn does not own: any random op other than a
    ``RandomUniformLike`` named ``qbnn/random/<i>``, and any ``Dropout`` whose training flag is
    not a constant False."""
    bad = []
    for node, consts in _walk(model.graph, {}):
        if node.op_type in RANDOM_OPS and (
            node.op_type != OWNED_OP or not node.name.startswith("qbnn/random/")
        ):
            bad.append(node)
        elif node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            flag = consts.get(node.input[2])
            if flag is None or bool(np.asarray(flag).reshape(-1)[0]):
                bad.append(node)
    return bad


def check_random_ops(model: onnx.ModelProto) -> None:
    """The graph-level guard of every export: raise :class:`ExportError` when a random op in
    the finished graph is not one qbnn owns (see :func:`foreign_random_ops`)."""
    bad = foreign_random_ops(model)
    if bad:
        names = ", ".join(f"{n.op_type} '{n.name}'" for n in bad[:3])
        raise ExportError(
            f"the exported graph holds {len(bad)} random op(s) qbnn does not own ({names}); "
            "their noise would be unseeded or wrong on some runtimes. This is a qbnn bug: "
            "please report it with the model"
        )


@dataclass(frozen=True)
class OwnRandomOps:
    """Pre: torch.onnx's output with its per-node metadata (names the source module). Post:
    every random op is a ``RandomUniformLike``; one note per rewritten op. Raises
    :class:`UnsupportedLayerError` for an op without a rewrite."""

    name = "own-random-ops"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        notes = own_random_ops(model)
        return PassResult(model, bool(notes), tuple(notes))


@dataclass(frozen=True)
class CheckRandomOps:
    """A guard, never modifies: raises :class:`ExportError` when a random op of the finished
    graph is not one qbnn owns (:func:`foreign_random_ops`)."""

    name = "check-random-ops"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        check_random_ops(model)
        return PassResult(model, False)
