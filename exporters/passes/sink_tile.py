"""Sink the sample tile of a tiled-batch graph: the deterministic prefix runs once on ``[B, ...]``.

Tiled-batch graphs (``mcdropout``; ``lrt`` and ``flipout`` sampling of Bayesian-Torch layers)
tile the input to ``[S*B, ...]`` first, ``T = Reshape(Expand(Unsqueeze(input, 0), [S, B, *F]),
[-1, *F])``, and run the whole network on all S*B rows. Every op between the tile and the first
random op is row-wise and the same for every sample, so its rows are S copies of the rows it
would compute on the batch itself. :class:`SinkTile` moves the tile down, like loop-invariant
code motion:

* the *region* is every node reachable from ``T`` through row-wise ops only
  (:func:`qbnn.exporters.passes.rowwise.rowwise`: Conv, Gemm/MatMul with a constant weight,
  eval BatchNorm, pooling, activations, elementwise ops with constants, reshapes that keep
  axis 0); a random op, an op reading ``num_samples`` or an op that mixes rows is not in it;
* the region is cloned on ``input [B, ...]`` (its ``Reshape`` shapes become ``[0, *rest]``,
  axis 0 copied, so they follow B);
* each region tensor still read by a node outside the region (a random op's template, the
  stochastic suffix, a graph output) is re-tiled under its own name,
  ``Tile(v [B, ...], [S, 1, ...]) -> [S*B, ...]`` (sample-major, as the original tile), with S
  the tile's own sample count; the original region and the tile, now dead, are removed.

The law of every output is unchanged, and so are the draws: every random op reads a tensor of
the same shape as before, so a seeded graph draws the same noise. A graph without the tile
pattern (the sample loop's ``Scan``, exact ensembles, ``frozen:K``, Laplace) or whose region
holds no Conv / Gemm / MatMul is returned unchanged.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qbnn.runtimes.onnxgraph import subgraphs, walk_nodes
from qbnn.runtimes.seeding import RANDOM_OPS

from .base import PassResult
from .rowwise import HEAVY_OPS, Facts, rowwise

__all__ = ["SinkTile", "TileSite", "find_tile"]

_PREFIX = "qbnn/sink"


@dataclass(frozen=True)
class TileSite:
    """Where a graph tiles its input: ``tiled = tile_S(source)`` ``[S*B, *F]``, S held by the
    1-element int64 tensor ``samples``."""

    source: str
    samples: str
    tiled: str


def _input_dims(model: onnx.ModelProto, name: str) -> tuple[int | None, ...] | None:
    for v in model.graph.input:
        if v.name == name and v.type.tensor_type.HasField("shape"):
            return tuple(
                d.dim_value if d.HasField("dim_value") else None
                for d in v.type.tensor_type.shape.dim
            )
    return None


def _tiles(node: onnx.NodeProto, facts: Facts, source: str) -> TileSite | None:
    """``node`` is ``Reshape(Expand(Unsqueeze(source, [0]), [S, B, *F']), [-1 | N, *F])``."""
    expand = facts.producer.get(node.input[0])
    if expand is None or expand.op_type != "Expand":
        return None
    unsq = facts.producer.get(expand.input[0])
    concat = facts.producer.get(expand.input[1])
    if unsq is None or unsq.op_type != "Unsqueeze" or unsq.input[0] != source:
        return None
    if len(unsq.input) > 1:
        axes = facts.ints(unsq.input[1])
    else:
        axes = next((list(a.ints) for a in unsq.attribute if a.name == "axes"), None)
    if axes not in ([0], [-(len(facts.shapes.get(source, ())) + 1)]):
        return None
    if concat is None or concat.op_type != "Concat" or facts.shapes.get(concat.input[0]) != (1,):
        return None
    facts.samples, facts.batch = concat.input[0], source
    dims = _input_dims(facts.model, source)
    shape = facts.symbols(expand.input[1], set())
    if dims is None or shape is None or shape[:2] != ["S", "B"] or len(shape) != len(dims) + 1:
        return None
    feat = dims[1:]
    if any(f is None or s not in (1, f) for s, f in zip(shape[2:], feat, strict=True)):
        return None
    target = facts.symbols(node.input[1], set())
    if target is None or target[0] not in (-1, "N") or target[1:] != list(feat):
        return None
    return TileSite(source, concat.input[0], node.output[0])


def find_tile(model: onnx.ModelProto, facts: Facts | None = None) -> TileSite | None:
    """The graph's input tile (see :class:`TileSite`), None when it has none."""
    facts = facts or Facts(model)
    sources = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.input[0] in facts.producer:
            for source in sources:
                site = _tiles(node, facts, source)
                if site is not None:
                    return site
    facts.samples = facts.batch = ""
    return None


def _uses(node: onnx.NodeProto) -> list[str]:
    """Names ``node`` reads, its subgraphs' (outer-scope) reads included."""
    names = [i for i in node.input if i]
    for g in subgraphs(node):
        names += [i for n in walk_nodes(g) for i in n.input if i]
    return names


def _region(model: onnx.ModelProto, facts: Facts, site: TileSite):
    """Region nodes ``(position, node, verdict)`` in graph order, and the batched tensors."""
    batched = {site.tiled}
    region = []
    for k, node in enumerate(model.graph.node):
        if not any(i in batched for i in _uses(node)):
            continue
        verdict = rowwise(node, facts, batched)
        if verdict is None:
            continue
        region.append((k, node, verdict))
        for out, b in zip(node.output, verdict.batched, strict=True):
            (batched if b else facts.constant).add(out)  # not batched: same value for any N
    return region, batched


class _Names:
    """Fresh, unique node names (:meth:`node`) and tensor names (:meth:`value`)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        nodes = list(walk_nodes(model.graph))
        self.nodes = {n.name for n in nodes}
        self.values = {o for n in nodes for o in n.output} | {i.name for i in model.graph.input}
        self.values |= {t.name for t in model.graph.initializer}

    @staticmethod
    def _fresh(base: str, taken: set[str]) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    def node(self, base: str) -> str:
        return self._fresh(base, self.nodes)

    def value(self, base: str) -> str:
        return self._fresh(base, self.values)


def _toposort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Nodes in dependency order, ties broken by their position in ``nodes``."""
    made = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    deps = [{made[i] for i in _uses(n) if i in made and made[i] != k} for k, n in enumerate(nodes)]
    users: list[list[int]] = [[] for _ in nodes]
    for k, d in enumerate(deps):
        for j in d:
            users[j].append(k)
    waiting = [len(d) for d in deps]
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        k = heapq.heappop(ready)
        out.append(nodes[k])
        for u in users[k]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(out) != len(nodes):
        raise ValueError("sink-tile produced a cyclic graph; this is a qbnn bug")
    return out


def _prune(graph: onnx.GraphProto) -> int:
    """Drop nodes whose outputs nothing reads (never random ops or subgraph holders), then
    unused initializers and value infos; returns the number of nodes dropped."""
    dropped = 0
    while True:
        used = {o.name for o in graph.output} | {i for n in graph.node for i in _uses(n)}
        keep = [
            n
            for n in graph.node
            if any(o in used for o in n.output) or n.op_type in RANDOM_OPS or subgraphs(n)
        ]
        if len(keep) == len(graph.node):
            break
        dropped += len(graph.node) - len(keep)
        del graph.node[:]
        graph.node.extend(keep)
    inputs = {i.name for i in graph.input}
    inits = [t for t in graph.initializer if t.name in used or t.name in inputs]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    made = {o for n in graph.node for o in n.output} | used
    infos = [v for v in graph.value_info if v.name in made]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return dropped


def _clone(region, site: TileSite, names: _Names, inits: list[onnx.TensorProto]):
    """The region's nodes on the un-tiled rows, and ``once``: region tensor -> its name there."""
    once = {site.tiled: site.source}
    clones = []
    for _, node, verdict in region:
        clone = onnx.NodeProto()
        clone.CopyFrom(node)
        clone.name = names.node(f"{node.name}/once")
        clone.input[:] = [once.get(i, i) for i in node.input]
        for k, (out, b) in enumerate(zip(node.output, verdict.batched, strict=True)):
            if out and b:
                once[out] = clone.output[k] = names.value(f"{out}/once")
        if verdict.reshape is not None:
            shape = names.value(f"{_PREFIX}/{node.name}/shape")
            inits.append(numpy_helper.from_array(np.array(verdict.reshape, np.int64), shape))
            clone.input[1] = shape
            del clone.attribute[:]
            clone.attribute.append(helper.make_attribute("allowzero", 0))
        clones.append(clone)
    return clones, once


def _retile(frontier, once, facts: Facts, site: TileSite, names: _Names, inits):
    """``Tile(v_once, Concat(S, [1] * (rank - 1)))`` named ``v`` for each frontier tensor;
    None when a frontier tensor's rank is unknown."""
    nodes, repeats = [], {}
    for v in frontier:
        rank = facts.rank(v)
        if not rank:
            return None
        if rank not in repeats:
            reps = site.samples
            if rank > 1:
                ones = names.value(f"{_PREFIX}/ones_{rank - 1}")
                inits.append(numpy_helper.from_array(np.ones(rank - 1, np.int64), ones))
                reps = names.value(f"{_PREFIX}/repeats_{rank}")
                name = names.node(f"{_PREFIX}/repeats_{rank}")
                nodes.append(
                    helper.make_node("Concat", [site.samples, ones], [reps], name=name, axis=0)
                )
            repeats[rank] = reps
        name = names.node(f"{_PREFIX}/tile/{v}")
        nodes.append(helper.make_node("Tile", [once[v], repeats[rank]], [v], name=name))
    return nodes


class SinkTile:
    """The graph pass (see the module docstring). ``__call__`` edits ``model`` in place.

    Precondition: :func:`qbnn.exporters.passes.finalize.finalize` ran (unique node names,
    ``num_samples`` input). Postcondition when modified: no node of the region reads a tensor
    that depends on ``num_samples``; every random op reads a tensor of the same shape as before.
    """

    name = "sink-tile"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        facts = Facts(model)
        site = find_tile(model, facts)
        if site is None:
            return PassResult(model, False)
        region, batched = _region(model, facts, site)
        heavy = sum(n.op_type in HEAVY_OPS for _, n, _ in region)
        if not heavy:
            return PassResult(model, False)
        g = model.graph
        names = _Names(model)
        inits: list[onnx.TensorProto] = []
        clones, once = _clone(region, site, names, inits)
        inside = {k for k, _, _ in region}
        outside = [n for k, n in enumerate(g.node) if k not in inside]
        read = {i for n in outside for i in _uses(n)} | {o.name for o in g.output}
        frontier = [v for v in once if v in read and v != site.tiled]
        retile = _retile(frontier, once, facts, site, names, inits)
        if retile is None:
            return PassResult(model, False)
        g.initializer.extend(inits)
        first = min(inside)  # the nodes before the first region node are all outside it
        order = outside[:first] + clones + retile + outside[first:]
        before = len(g.node)
        del g.node[:]
        g.node.extend(_toposort(order))
        _prune(g)
        tiles = sum(n.op_type == "Tile" and n.name.startswith(f"{_PREFIX}/tile/") for n in g.node)
        note = (
            f"{self.name}: {len(region)} op(s) after the sample tile ({heavy} Conv/Gemm/MatMul) "
            f"now run once on [B, ...]; {tiles} tensor(s) re-tiled to [S*B, ...] "
            f"({before} -> {len(g.node)} nodes)"
        )
        return PassResult(model, True, (note,))
