"""Loop-invariant code motion out of the sample loop's ``Scan`` body (issue 21, item 1).

A ``weight``-mode graph (:mod:`qbnn.exporters.sampleloop`) runs the whole network once per MC
sample inside a ``Scan``. After :func:`~qbnn.exporters.passes.finalize.finalize` the body is
self-contained: outer constants are body initializers, the input batch is a loop state the body
passes through unchanged, and the per-sample weights and noise are scanned inputs (the random
ops were drawn outside by :func:`~qbnn.exporters.hoist.hoist_scan_noise`). Whatever the body
computes from constants and pass-through states alone is the same in every iteration: a
deterministic backbone under a Bayesian head, the deterministic blocks before a Bayesian block.

:class:`ScanLICM` moves those nodes to the outer graph, just before the Scan, so they run once
per input instead of once per sample:

* a body node is *invariant* when every input is a body initializer, a pass-through state
  (the body's state output is an ``Identity`` of, or the same name as, its state input), an
  outer-scope value, or the output of an invariant node; random ops
  (:data:`~qbnn.runtimes.seeding.RANDOM_OPS`), ``Dropout``, ops outside the default ONNX domain,
  nodes holding subgraphs and nodes producing a body output are never invariant. An invariant
  node *moves* when it depends on a pass-through state (the input batch); purely constant
  helpers (``Constant``, shape arithmetic on constants) stay in the body and are copied out
  where a moved node needs them;
* body initializers that moved nodes read are copied to the outer graph (under their
  pre-``finalize`` name where that is free, else a fresh one), pass-through states map to the
  Scan's outer inputs;
* each *frontier* tensor (computed by a moved node and read by a node left in the body) comes
  back into the body as a **new pass-through loop state** ``<name>/carried`` (inserted after the
  existing states; the Scan gains an output ``<name>/carried_final`` at the same position), not
  as an outer-scope reference: OpenVINO's ONNX frontend cannot convert a body that reads
  outer-scope values;
* pass-through states, body initializers and constant helpers the move left unused are
  dropped (a state only when its final value is unused outside the Scan).

Every outer value keeps its value and every iteration computes the same per-sample values from
the same inputs, so the graph's outputs are unchanged bit for bit up to kernel choice. The pass
touches top-level Scans only and is a no-op for graphs without one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import helper

from qbnn.runtimes.onnxgraph import iter_graphs, subgraphs, walk_nodes
from qbnn.runtimes.seeding import RANDOM_OPS

from .base import PassResult

__all__ = ["ScanLICM"]

#: ops never moved even with invariant inputs (``Dropout`` draws a mask when ``training_mode``)
_NEVER = RANDOM_OPS | {"Dropout"}
_SUFFIX = "/in_loop"  # self_contained_scans' name for a body copy of an outer initializer


def _attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    return next((a for a in node.attribute if a.name == name), None)


def _all_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor name mentioned anywhere in the model (subgraphs included)."""
    names: set[str] = set()
    for g in iter_graphs(model.graph):
        names.update(t.name for t in g.initializer)
        names.update(v.name for v in [*g.input, *g.output, *g.value_info])
        for n in g.node:
            names.update(n.input)
            names.update(n.output)
    names.discard("")
    return names


def _reads(nodes) -> set[str]:
    """Names read by ``nodes`` and by any subgraph they hold (outer-scope references)."""
    out: set[str] = set()
    for n in nodes:
        out.update(n.input)
        for g in subgraphs(n):
            out.update(i for m in walk_nodes(g) for i in m.input)
            out.update(o.name for o in g.output)
    out.discard("")
    return out


@dataclass
class _Names:
    """Fresh-name allocator over every name in the model."""

    taken: set[str]

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}/licm" if k == 2 else f"{base}/licm_{k - 1}"
        self.taken.add(name)
        return name


@dataclass
class _Plan:
    """What moves out of one Scan body: ``moved`` and ``helpers`` (constant nodes copied out)
    as body node indices in body order, ``rename`` body name -> outer name for everything the
    outer copies read or write, and the ``frontier`` tensors, in body order."""

    moved: list[int] = field(default_factory=list)
    helpers: list[int] = field(default_factory=list)
    rename: dict[str, str] = field(default_factory=dict)
    frontier: list[str] = field(default_factory=list)


def _pass_through(scan: onnx.NodeProto, body: onnx.GraphProto, n_states: int) -> dict[int, str]:
    """State index -> its Identity node's output (or ``""`` when the body output is the input
    itself) for every state the body passes through unchanged."""
    producer = {o: n for n in body.node for o in n.output}
    out: dict[int, str] = {}
    for k in range(n_states):
        name_in, name_out = body.input[k].name, body.output[k].name
        if name_out == name_in:
            out[k] = ""
            continue
        node = producer.get(name_out)
        if node is not None and node.op_type == "Identity" and list(node.input) == [name_in]:
            out[k] = name_out
    return out


def _classify(body: onnx.GraphProto, states: set[str]) -> tuple[list[int], list[int]]:
    """Indices of invariant body nodes that depend on a pass-through state (``moved``) and of
    those that depend on constants only (``const``), in body order."""
    known = {i.name for i in body.input} | {t.name for t in body.initializer}
    known |= {o for n in body.node for o in n.output}
    body_outputs = {o.name for o in body.output}
    # tensor -> depends on a pass-through state; absent = varies per iteration
    inv: dict[str, bool] = {t.name: False for t in body.initializer}
    inv.update({s: True for s in states})
    moved, const = [], []
    for idx, node in enumerate(body.node):
        ok = (
            node.op_type not in _NEVER
            and node.domain in ("", "ai.onnx")
            and not subgraphs(node)
            and not body_outputs.intersection(node.output)
        )
        dep = False
        for name in node.input:
            if not ok:
                break
            if not name or name not in known:  # optional input or outer-scope value
                continue
            if name not in inv:
                ok = False
            dep |= inv.get(name, False)
        if not ok:
            continue
        inv.update({o: dep for o in node.output if o})
        (moved if dep else const).append(idx)
    return moved, const


def _plan(body: onnx.GraphProto, scan: onnx.NodeProto, n_states: int, names: _Names) -> _Plan:
    passing = _pass_through(scan, body, n_states)
    states = {body.input[k].name: scan.input[k] for k in passing}
    moved, const = _classify(body, set(states))
    plan = _Plan(moved=moved)
    if not moved:
        return plan
    nodes = body.node
    moved_set = set(moved)
    # constant helpers the moved nodes read, transitively
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    const_set, need, stack = set(const), set(), [i for m in moved for i in nodes[m].input]
    while stack:
        idx = producer.get(stack.pop())
        if idx is not None and idx in const_set and idx not in need:
            need.add(idx)
            stack.extend(nodes[idx].input)
    plan.helpers = sorted(need)
    plan.rename.update(states)
    for idx in plan.helpers:  # copies: fresh names, the originals may stay in the body
        for o in nodes[idx].output:
            if o:
                plan.rename[o] = names.fresh(f"{o}/licm")
    # moved outputs keep their names outside; frontier values get a new name inside
    left = _reads(n for i, n in enumerate(nodes) if i not in moved_set)
    for idx in moved:
        for o in nodes[idx].output:
            if o and o in left:
                plan.frontier.append(o)
    reads = _reads(nodes[i] for i in [*plan.helpers, *moved])
    inits = {t.name: t for t in body.initializer}
    for name in sorted(reads & set(inits)):
        base = name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else f"{name}/licm"
        plan.rename[name] = names.fresh(base)
    return plan


def _state_info(src: onnx.ValueInfoProto | None, name: str) -> onnx.ValueInfoProto:
    """``src``'s type under ``name`` (float32 of unknown shape when ``src`` is None, as
    :func:`~qbnn.exporters.passes.finalize.self_contained_scans` does)."""
    info = onnx.ValueInfoProto()
    if src is not None:
        info.CopyFrom(src)
    else:
        info.CopyFrom(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    info.name = name
    return info


def _copy_node(node: onnx.NodeProto, rename: dict[str, str], name: str) -> onnx.NodeProto:
    c = onnx.NodeProto()
    c.CopyFrom(node)
    c.name = name
    c.input[:] = [rename.get(i, i) for i in c.input]
    c.output[:] = [rename.get(o, o) for o in c.output]
    return c


def _rename_reads(node: onnx.NodeProto, rename: dict[str, str]) -> None:
    """Rename what ``node`` and its subgraphs read (outer-scope references included)."""
    node.input[:] = [rename.get(i, i) for i in node.input]
    for g in subgraphs(node):
        for m in walk_nodes(g):
            m.input[:] = [rename.get(i, i) for i in m.input]
        for o in g.output:
            o.name = rename.get(o.name, o.name)


def _outer_used(graph: onnx.GraphProto) -> set[str]:
    return _reads(graph.node) | {o.name for o in graph.output}


class _Mover:
    """Applies the plan of one top-level Scan (``graph.node[si]``) in place."""

    def __init__(self, model: onnx.ModelProto, si: int, names: _Names, node_names: _Names):
        self.model, self.graph, self.si = model, model.graph, si
        self.scan = model.graph.node[si]
        self.body = _attr(self.scan, "body").g
        self.n_states = len(self.scan.input) - _attr(self.scan, "num_scan_inputs").i
        self.names, self.node_names = names, node_names

    def run(self) -> tuple[list[onnx.NodeProto], int, int]:
        """Outer nodes to insert before the Scan, how many body nodes moved, and how many the
        body holds now."""
        body, graph = self.body, self.graph
        plan = _plan(body, self.scan, self.n_states, self.names)
        if not plan.moved:
            return [], 0, len(body.node)
        nodes = list(body.node)
        rename = plan.rename
        top = {o for n in graph.node for o in n.output} | {t.name for t in graph.initializer}
        top |= {i.name for i in graph.input}
        for idx in plan.moved:  # outputs keep their names outside unless the name is taken there
            for o in nodes[idx].output:
                if o in top:
                    rename[o] = self.names.fresh(f"{o}/licm")
        types = self._frontier_types(plan)
        read_by_moved = _reads(nodes[i] for i in plan.moved)
        helper_outputs = {o for i in plan.helpers for o in nodes[i].output if o}
        outer = []
        for idx in sorted([*plan.helpers, *plan.moved]):
            n = nodes[idx]
            copy = idx in plan.helpers
            name = self.node_names.fresh(f"{n.name or n.op_type}/licm") if copy else n.name
            outer.append(_copy_node(n, rename, name))
        self._initializers_out(rename)
        self._value_infos_out(nodes, plan)
        moved = set(plan.moved)
        kept = [n for i, n in enumerate(nodes) if i not in moved]
        del body.node[:]
        body.node.extend(kept)
        self._add_states(plan, types)
        self._cleanup(helper_outputs, read_by_moved)
        return outer, len(plan.moved), len(body.node)

    def _frontier_types(self, plan: _Plan) -> dict[str, onnx.ValueInfoProto | None]:
        """Each frontier tensor's value_info: torch.onnx's, else ONNX shape inference's (run
        before any edit, only when needed), else None."""
        infos = {v.name: v for v in self.body.value_info}
        if any(t not in infos for t in plan.frontier):
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model)
                body = _attr(inferred.graph.node[self.si], "body").g
                infos = {v.name: v for v in body.value_info} | infos
            except Exception:  # noqa: BLE001 - a best effort: the type falls back to float32
                pass
        return {t: infos.get(t) for t in plan.frontier}

    def _initializers_out(self, rename: dict[str, str]) -> None:
        for t in self.body.initializer:
            if t.name in rename:
                c = self.graph.initializer.add()
                c.CopyFrom(t)
                c.name = rename[t.name]

    def _value_infos_out(self, nodes, plan: _Plan) -> None:
        """Types of the moved tensors go to the outer graph with them."""
        gone = {o for i in plan.moved for o in nodes[i].output}
        for v in self.body.value_info:
            if v.name in gone:
                self.graph.value_info.append(_state_info(v, plan.rename.get(v.name, v.name)))
        kept = [v for v in self.body.value_info if v.name not in gone]
        del self.body.value_info[:]
        self.body.value_info.extend(kept)

    def _add_states(self, plan: _Plan, types: dict) -> None:
        """Frontier tensors come back in as pass-through states after the existing ones."""
        scan, body, names = self.scan, self.body, self.names
        inner_of: dict[str, str] = {}
        for j, t in enumerate(plan.frontier):
            inner = names.fresh(f"{t}/carried")
            out = names.fresh(f"{inner}/out")
            pos = self.n_states + j
            src = types[t]
            scan.input.insert(pos, plan.rename.get(t, t))
            scan.output.insert(pos, names.fresh(f"{t}/carried_final"))
            body.input.insert(pos, _state_info(src, inner))
            body.output.insert(pos, _state_info(src, out))
            ident = helper.make_node(
                "Identity", [inner], [out], name=self.node_names.fresh(f"{inner}/pass")
            )
            body.node.append(ident)
            inner_of[t] = inner
        for n in body.node:  # readers of a frontier tensor read its loop state now
            _rename_reads(n, inner_of)
        self.n_states += len(plan.frontier)

    def _cleanup(self, helper_outputs: set[str], read_by_moved: set[str]) -> None:
        """Drop constant helpers, body initializers and pass-through states left unused."""
        body = self.body
        while True:  # helpers feeding only other dropped helpers go too
            used = _reads(body.node) | {o.name for o in body.output}
            kept = [
                n
                for n in body.node
                if used.intersection(n.output) or helper_outputs.isdisjoint(n.output)
            ]
            if len(kept) == len(body.node):
                break
            del body.node[:]
            body.node.extend(kept)
        used = _reads(body.node) | {o.name for o in body.output}
        inits = [t for t in body.initializer if t.name in used]
        del body.initializer[:]
        body.initializer.extend(inits)
        self._drop_states(read_by_moved)

    def _drop_states(self, read_by_moved: set[str]) -> None:
        """Remove pass-through states the moved nodes read and nothing else does now."""
        scan, body = self.scan, self.body
        outer_used = _outer_used(self.graph)
        for k in sorted(_pass_through(scan, body, self.n_states), reverse=True):
            name_in, name_out = body.input[k].name, body.output[k].name
            if name_in not in read_by_moved or scan.output[k] in outer_used:
                continue
            ident = [n for n in body.node if n.output and n.output[0] == name_out]
            others = [n for n in body.node if n not in ident]
            if name_in in _reads(others) or name_out == name_in:
                continue
            del body.node[:]
            body.node.extend(others)
            for seq in (scan.input, scan.output, body.input, body.output):
                del seq[k]
            self.n_states -= 1


class ScanLICM:
    """Loop-invariant code motion out of every top-level ``Scan`` body (see the module
    docstring for what moves and how the Scan is rewired).

    ``__call__(model)`` edits ``model`` in place and returns it in a :class:`PassResult`,
    ``modified`` when any node moved, with one note per Scan that changed. Preconditions: the
    graph came out of :func:`~qbnn.exporters.passes.finalize.finalize` (self-contained Scan bodies,
    unique node names) or is any valid ONNX model. Postconditions: the same outputs for the
    same inputs (and seeds); no body reads an outer-scope value it did not read before; node
    and tensor names stay unique.
    """

    name = "scan_licm"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset < 9 or not any(n.op_type == "Scan" for n in graph.node):
            return PassResult(model, False)  # Scan-8 has a leading sequence_lens input
        names = _Names(_all_names(model))
        node_names = _Names({n.name for n in walk_nodes(graph) if n.name})
        notes: list[str] = []
        si = 0
        while si < len(graph.node):
            node = graph.node[si]
            if node.op_type != "Scan" or _attr(node, "body") is None:
                si += 1
                continue
            scan_name, before = node.name, len(_attr(node, "body").g.node)
            outer, moved, after = _Mover(model, si, names, node_names).run()
            for k, n in enumerate(outer):
                graph.node.insert(si + k, n)
            si += len(outer) + 1
            if outer:
                notes.append(
                    f"{self.name}: {moved} of the {before} nodes of the sample loop "
                    f"'{scan_name}' run once outside it ({after} per sample)"
                )
        return PassResult(model, bool(notes), tuple(notes))
