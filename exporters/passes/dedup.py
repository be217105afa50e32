"""Shared backbones computed once: merge equal initializers and common subexpressions.

Exact posteriors unrolled as K copies of a network (``frozen:K`` draws, ensembles and
``WeightSamples`` whose members share layers, SWAG / Gaussian / Laplace draws over a subset of
the parameters) hold K copies of every shared layer under K parameter names. The torch exporter's
optimizer merges equal initializers only below a size limit (1024 elements), so whether a
backbone came out once depended on its layer sizes. :class:`DedupPass` makes it deliberate:

1. initializers with the same dtype, shape and bytes are merged (sha256 first, then the bytes
   compared), whatever their size;
2. common-subexpression elimination: a node with the same domain, op type, overload,
   attributes, (canonicalised) inputs and optional-output pattern as an earlier node is dropped
   and its outputs renamed to that node's, in one topological sweep repeated to a fixed point;
3. initializers nothing reads any more are dropped.

Never merged: random ops (two identical-looking draws are two distinct draws), ``Dropout``,
nodes calling a model-local function that draws, nodes holding subgraphs, initializers that are
graph inputs (overridable defaults: format 1's ``num_samples``) or outputs, tensors stored
outside the file, and a duplicate whose output is a graph output. Renames reach into subgraphs (a
``Loop`` / ``If`` body may read outer values). Only the main graph is deduplicated.

Precondition: a topologically sorted graph (every ONNX model). Postcondition: the same outputs,
bit for bit, for every input and ``num_samples`` (each kept node computes exactly what each
dropped one did), fewer or equally many nodes and initializers.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection

import onnx
from onnx import numpy_helper

from qbnn.runtimes.onnxgraph import subgraphs, walk_nodes
from qbnn.runtimes.seeding import RANDOM_OPS

from .base import PassResult

__all__ = ["DedupPass", "is_mergeable"]

#: binary ops whose two inputs may be swapped (IEEE addition / multiplication commute exactly)
_COMMUTATIVE = frozenset({"Add", "Mul", "Equal", "And", "Or", "Xor"})
_AI_ONNX = ("", "ai.onnx")


def _draws(op_type: str) -> bool:
    """Random ops, Dropout (training mode draws a mask) and their contrib variants
    (``com.microsoft`` ``BiasDropout``, ...), whatever the domain."""
    return op_type in RANDOM_OPS or op_type.startswith("Random") or "Dropout" in op_type


def _drawing_functions(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """``(domain, name)`` of the model-local functions that draw (a random op in their body,
    its subgraphs, or a drawing function they call), transitively."""
    funcs = {(f.domain, f.name): f for f in model.functions}
    bad: set[tuple[str, str]] = set()
    changed = True
    while changed:
        changed = False
        for key, f in funcs.items():
            inner = [
                m for n in f.node for m in (n, *(x for g in subgraphs(n) for x in walk_nodes(g)))
            ]
            if key not in bad and any(
                _draws(n.op_type) or (n.domain, n.op_type) in bad for n in inner
            ):
                bad.add(key)
                changed = True
    return bad


def is_mergeable(node: onnx.NodeProto, drawing: Collection[tuple[str, str]] = ()) -> bool:
    """Whether CSE may merge ``node`` with an identical one: not random / Dropout (any
    domain), no subgraph attribute, not a call of a ``drawing`` local function, and at least
    one output."""
    if _draws(node.op_type):
        return False
    if (node.domain, node.op_type) in drawing:
        return False
    return not subgraphs(node) and any(node.output)


def _tensor_key(t: onnx.TensorProto) -> tuple[int, tuple[int, ...], bytes] | None:
    """``(dtype, dims, bytes)`` of an initializer, or None when it must not be merged."""
    if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type == onnx.TensorProto.STRING:
        return None
    data = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
    return t.data_type, tuple(t.dims), data


def _rename(graph: onnx.GraphProto, renames: dict[str, str], shadow: frozenset = frozenset()):
    """Apply ``renames`` to every node input of ``graph`` and its subgraphs, in place; a name a
    subgraph defines itself (input, initializer, node output) is left alone inside it."""
    for node in graph.node:
        node.input[:] = [i if i in shadow else renames.get(i, i) for i in node.input]
        for sub in subgraphs(node):
            local = {v.name for v in sub.input} | {t.name for t in sub.initializer}
            local |= {o for n in walk_nodes(sub) for o in n.output}
            _rename(sub, renames, shadow | (local & renames.keys()))


def _protected(graph: onnx.GraphProto) -> set[str]:
    return {v.name for v in graph.input} | {v.name for v in graph.output}


def merge_initializers(graph: onnx.GraphProto) -> int:
    """Point every reader of a duplicate initializer at the first equal one; returns the
    number of duplicates redirected (the pruning step removes them)."""
    protected = _protected(graph)
    buckets: dict[tuple[int, tuple[int, ...], str], list[tuple[bytes, str]]] = {}
    renames: dict[str, str] = {}
    for t in graph.initializer:
        key = None if t.name in protected else _tensor_key(t)
        if key is None:
            continue
        dtype, dims, data = key
        bucket = buckets.setdefault((dtype, dims, hashlib.sha256(data).hexdigest()), [])
        first = next((name for d, name in bucket if d == data), None)
        if first is None:
            bucket.append((data, t.name))
        else:
            renames[t.name] = first
    if renames:
        _rename(graph, renames)
    return len(renames)


def _node_key(node: onnx.NodeProto) -> tuple:
    inputs = tuple(node.input)
    if node.op_type in _COMMUTATIVE and node.domain in _AI_ONNX and len(inputs) == 2:
        inputs = tuple(sorted(inputs))
    attrs = tuple(sorted((a.name, a.SerializeToString(deterministic=True)) for a in node.attribute))
    present = tuple(bool(o) for o in node.output)
    return node.domain, node.op_type, node.overload, attrs, inputs, present


def eliminate_common_subexpressions(
    graph: onnx.GraphProto, drawing: Collection[tuple[str, str]] = ()
) -> Counter:
    """One topological sweep of CSE over ``graph`` (in place); returns merged nodes per op
    type. Inputs are canonicalised as the sweep goes, so one sweep reaches the fixed point of
    a sorted graph; :class:`DedupPass` repeats it until nothing merges."""
    outputs = {v.name for v in graph.output}
    seen: dict[tuple, onnx.NodeProto] = {}
    renames: dict[str, str] = {}
    kept, merged = [], Counter()
    for node in graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
        for sub in subgraphs(node):
            _rename(sub, renames)
        if not is_mergeable(node, drawing):
            kept.append(node)
            continue
        key = _node_key(node)
        first = seen.get(key)
        if first is None or any(o in outputs for o in node.output):
            seen.setdefault(key, node)
            kept.append(node)
            continue
        for mine, theirs in zip(node.output, first.output, strict=True):
            if mine:
                renames[mine] = theirs
        merged[node.op_type] += 1
    if merged:
        dropped = set(renames)
        del graph.node[:]
        graph.node.extend(kept)
        infos = [v for v in graph.value_info if v.name not in dropped]
        del graph.value_info[:]
        graph.value_info.extend(infos)
    return merged


def prune_initializers(graph: onnx.GraphProto) -> int:
    """Drop initializers that no node (subgraphs included), graph input or output reads;
    returns how many were dropped."""
    used = {i for n in walk_nodes(graph) for i in n.input} | _protected(graph)
    kept = [t for t in graph.initializer if t.name in used]
    dropped = len(graph.initializer) - len(kept)
    if dropped:
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return dropped


class DedupPass:
    """Merge equal initializers, then common subexpressions to a fixed point, then prune
    unused initializers (see the module docstring for what is never merged).

    ``__call__(model)`` edits ``model`` in place and returns it in a :class:`PassResult` whose
    notes say how many initializers and nodes were merged (per op type, largest first) and the
    node count before and after. Raises nothing on a well-formed model.
    """

    name = "dedup"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        g = model.graph
        nodes_before = len(g.node)
        bytes_before = sum(t.ByteSize() for t in g.initializer)
        inits = merge_initializers(g)
        drawing = _drawing_functions(model)
        merged: Counter = Counter()
        while step := eliminate_common_subexpressions(g, drawing):
            merged += step
        pruned = prune_initializers(g)
        if not (inits or merged or pruned):
            return PassResult(model, False)
        saved = bytes_before - sum(t.ByteSize() for t in g.initializer)
        ops = ", ".join(f"{n} {op}" for op, n in merged.most_common())
        notes = (
            f"{self.name}: {inits} duplicate initializers merged and {pruned} unused dropped "
            f"({saved / 2**20:.2f} MiB); {sum(merged.values())} duplicate nodes merged"
            + (f" ({ops})" if ops else "")
            + f": {nodes_before} -> {len(g.node)} nodes",
        )
        return PassResult(model, True, notes)
