"""ONNX graph edits applied after ``torch.onnx.export`` (the finalize passes).

* the sample-template input becomes ``ConstantOfShape(Reshape(num_samples, [1]))`` so S is an
  int64 scalar graph input ``num_samples`` (no initializer: contract format 2; its default is
  metadata, written by :class:`SetMetadata`);
* every node gets a unique name (INC requires it) and random nodes get readable names;
* the exporter's tracing metadata (stack traces, FX node names, per node and per value) is
  dropped: it made up most of a small model's file and is not part of the contract;
* optional seeds on the random nodes; ``qbnn.*`` metadata;
* ``Scan`` bodies (the sample loop) become self-contained: outer-scope constants are copied into
  the body and outer-scope computed values (the input batch) are carried as loop states, because
  OpenVINO's ONNX frontend cannot convert a body that reads outer-scope values.

Each edit is a function (in place) and a pass obeying :class:`~.base.GraphPass`;
:func:`finalize_passes` lists them in the order they must run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qbnn.runtimes.contract import NUM_SAMPLES
from qbnn.runtimes.loading import set_metadata
from qbnn.runtimes.onnxgraph import walk_nodes
from qbnn.runtimes.seeding import RANDOM_OPS, reseed

from .base import GraphPass, PassResult, run_passes

__all__ = [
    "AttachNumSamples",
    "NameNodes",
    "Reseed",
    "SelfContainedScans",
    "SetMetadata",
    "StripTracingMetadata",
    "attach_num_samples",
    "finalize",
    "finalize_passes",
    "name_nodes",
    "outer_refs",
    "self_contained_scans",
    "strip_tracing_metadata",
]


def attach_num_samples(model: onnx.ModelProto, template_name: str) -> None:
    """Replace float input ``template_name [S]`` by the int64 scalar input ``num_samples`` (a
    plain input that callers feed; no initializer backs it). Raises ``ValueError`` when the
    graph has no input ``template_name``."""
    g = model.graph
    kept = [i for i in g.input if i.name != template_name]
    if len(kept) == len(g.input):
        raise ValueError(f"graph has no input named {template_name!r}")
    del g.input[:]
    g.input.extend(kept)
    g.input.append(helper.make_tensor_value_info(NUM_SAMPLES, TensorProto.INT64, []))
    g.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "qbnn_shape_1"))
    nodes = [
        helper.make_node(
            "Reshape",
            [NUM_SAMPLES, "qbnn_shape_1"],
            ["qbnn_num_samples_1d"],
            name="qbnn/num_samples/reshape",
        ),
        helper.make_node(
            "ConstantOfShape",
            ["qbnn_num_samples_1d"],
            [template_name],
            name="qbnn/num_samples/template",
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]),
        ),
    ]
    for i, node in enumerate(nodes):
        g.node.insert(i, node)


def _attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    return next((a for a in node.attribute if a.name == name), None)


def outer_refs(body: onnx.GraphProto) -> list[str]:
    """Names a subgraph reads but neither declares nor computes, in first-use order."""
    known = {i.name for i in body.input} | {t.name for t in body.initializer}
    refs: list[str] = []
    for node in body.node:
        for name in node.input:
            if name and name not in known and name not in refs:
                refs.append(name)
        known.update(node.output)
    return refs + [o.name for o in body.output if o.name not in known and o.name not in refs]


def self_contained_scans(model: onnx.ModelProto) -> None:
    """Make every top-level ``Scan`` body read only its own inputs and initializers (in place).

    An outer initializer the body reads is copied into the body (and dropped from the outer
    graph when nothing else uses it); any other outer value becomes an extra loop state that the
    body passes through unchanged.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    infos = {v.name: v for v in [*g.input, *g.value_info]}
    for node in g.node:
        if node.op_type != "Scan":
            continue
        body = _attr(node, "body").g
        states = len(node.input) - _attr(node, "num_scan_inputs").i
        carried, renamed = [], {}
        for name in outer_refs(body):
            if name in inits:
                renamed[name] = f"{name}/in_loop"
                body.initializer.append(copy_tensor(inits[name], renamed[name]))
            else:
                carried.append(name)
                renamed[name] = f"{name}/carried"
        for n in body.node:
            n.input[:] = [renamed.get(i, i) for i in n.input]
        for k, name in enumerate(carried):
            inner = renamed[name]
            info = onnx.ValueInfoProto()
            info.CopyFrom(infos.get(name, helper.make_tensor_value_info(name, 1, None)))
            info.name = inner
            node.input.insert(states + k, name)
            node.output.insert(states + k, f"{name}/carried_final")
            body.input.insert(states + k, info)
            body.node.append(helper.make_node("Identity", [inner], [f"{inner}/out"]))
            body.output.insert(states + k, helper.make_tensor_value_info(f"{inner}/out", 1, None))
    # subgraph bodies (Loop / If, e.g. nn.EmbeddingBag's Loop) may read outer initializers too
    used = {i for n in walk_nodes(g) for i in n.input} | {o.name for o in g.output}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)


def copy_tensor(t: onnx.TensorProto, name: str) -> onnx.TensorProto:
    """A copy of ``t`` named ``name``."""
    out = onnx.TensorProto()
    out.CopyFrom(t)
    out.name = name
    return out


def strip_tracing_metadata(model: onnx.ModelProto) -> None:
    """Drop per-node and per-value ``metadata_props`` and doc strings (torch.onnx's stack
    traces, FX names and scopes), subgraphs included; model-level metadata is kept."""
    graphs = [model.graph] + [
        a.g for n in walk_nodes(model.graph) for a in n.attribute if a.type == a.GRAPH
    ]
    for graph in graphs:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
        for value in [*graph.input, *graph.output, *graph.value_info]:
            del value.metadata_props[:]
            value.doc_string = ""


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node (subgraphs included) a unique, non-empty name; random nodes become
    ``qbnn/random/<i>``."""
    seen: set[str] = set()
    r = 0
    for i, node in enumerate(walk_nodes(model.graph)):
        if node.op_type in RANDOM_OPS:
            node.name = f"qbnn/random/{r}"
            r += 1
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


@dataclass(frozen=True)
class AttachNumSamples:
    """Pre: the graph has a float input ``template`` ``[S]``. Post: that input is gone; an int64
    scalar input ``num_samples`` (no initializer of that name) feeds two new first nodes
    ``qbnn/num_samples/reshape`` and ``qbnn/num_samples/template`` that compute it."""

    template: str
    name = "attach-num-samples"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        attach_num_samples(model, self.template)
        return PassResult(model, True)


@dataclass(frozen=True)
class StripTracingMetadata:
    """Post: no node or value (subgraphs included) has ``metadata_props`` or a doc string."""

    name = "strip-tracing-metadata"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        strip_tracing_metadata(model)
        return PassResult(model, True)


@dataclass(frozen=True)
class SelfContainedScans:
    """Post: every top-level ``Scan`` body reads only its own inputs and initializers; outer
    initializers nothing reads any more are dropped."""

    name = "self-contained-scans"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        self_contained_scans(model)
        return PassResult(model, True)


@dataclass(frozen=True)
class NameNodes:
    """Post: every node has a unique non-empty name; random nodes are ``qbnn/random/<i>``."""

    name = "name-nodes"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        name_nodes(model)
        return PassResult(model, True)


@dataclass(frozen=True)
class Reseed:
    """Pre: random nodes are named. Post: with ``seed`` set, every random node has a distinct
    seed derived from it (:func:`qbnn.runtimes.seeding.reseed`); ``seed=None`` changes nothing."""

    seed: int | None
    name = "reseed"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        if self.seed is None:
            return PassResult(model, False)
        reseed(model, self.seed)
        return PassResult(model, True)


@dataclass(frozen=True)
class SetMetadata:
    """Post: the model's ``metadata_props`` hold ``meta`` (keys replaced, others kept)."""

    meta: dict[str, str] = field(default_factory=dict)
    name = "set-metadata"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        set_metadata(model, self.meta)
        return PassResult(model, bool(self.meta))


def finalize_passes(
    template_name: str, seed: int | None, meta: dict[str, str]
) -> tuple[GraphPass, ...]:
    """The post-export edits as passes, in the order they must run (``meta`` carries the
    ``num_samples`` default as ``default_samples``)."""
    return (
        AttachNumSamples(template_name),
        StripTracingMetadata(),
        SelfContainedScans(),
        NameNodes(),
        Reseed(seed),
        SetMetadata(meta),
    )


def finalize(
    model: onnx.ModelProto,
    template_name: str,
    seed: int | None,
    meta: dict[str, str],
) -> None:
    """All post-export edits, in place (:func:`finalize_passes` in order)."""
    run_passes(model, finalize_passes(template_name, seed, meta))
