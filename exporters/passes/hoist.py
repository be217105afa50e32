"""Random draws of a ``Scan`` body are drawn once, outside the loop, for all S iterations.

The ``stochastic`` family runs the user's forward once per MC sample inside an ONNX ``Scan``,
so the forward's random ops land in the loop body. ONNX Runtime draws fresh noise there on every
iteration, but OpenVINO does not (measured, openvino 2026.4 CPU: a weight-shaped N(0, 1) draw
inside the body had per-element standard deviations between 0.04 and 1.9 over 2000
iterations). :func:`hoist_scan_noise` therefore moves every ``RandomUniformLike`` out of each
top-level Scan body: the nodes computing its template (from the loop-invariant batch and
weights) are copied to the outer graph, one draw ``[S, *shape]`` is made there and scanned
like any other per-sample input, exactly as
:class:`~qbnn.exporters.modules.loopmodel.GaussianSource` feeds per-sample weights. Run it after
:func:`~qbnn.exporters.passes.randomops.own_random_ops` (so every random op is a
``RandomUniformLike``) and before the Scan bodies are made self-contained.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

from qbnn.runtimes.errors import ExportError

from .base import PassResult
from .randomops import OWNED_OP

__all__ = ["HoistScanNoise", "hoist_scan_noise"]


def _attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    return next((a for a in node.attribute if a.name == name), None)


def _slice(body: onnx.GraphProto, name: str, hoisted: dict) -> list[onnx.NodeProto] | None:
    """Body nodes computing ``name``, in body order; None when it depends on a body input (a
    per-iteration value) other than an already hoisted draw (whose shape is its template's)."""
    producer = {o: n for n in body.node for o in n.output}
    inputs = {i.name for i in body.input} - set(hoisted)
    need, seen, stack = [], set(), [name]
    while stack:
        cur = stack.pop()
        if cur in inputs:
            return None
        node = producer.get(cur)
        if node is None or id(node) in seen:
            continue  # an outer value or initializer: loop-invariant
        seen.add(id(node))
        need.append(node)
        stack.extend(i for i in node.input if i)
    order = {id(n): k for k, n in enumerate(body.node)}
    return sorted(need, key=lambda n: order[id(n)])


def _input_info(graph, body: onnx.GraphProto, rnd: onnx.NodeProto) -> onnx.ValueInfoProto:
    """The draw's type as a body input, with its shape (OpenVINO needs a static rank where a
    Conv reads it): torch.onnx's value info of the draw or of its template (body or outer)."""
    infos = {v.name: v for v in [*graph.input, *graph.value_info, *body.input, *body.value_info]}
    for name in (rnd.output[0], rnd.input[0]):
        if name in infos:
            info = onnx.ValueInfoProto()
            info.CopyFrom(infos[name])
            info.name = rnd.output[0]
            dtype = next((a.i for a in rnd.attribute if a.name == "dtype"), None)
            if dtype is not None:
                info.type.tensor_type.elem_type = dtype
            kept = [v for v in body.value_info if v.name != rnd.output[0]]
            del body.value_info[:]
            body.value_info.extend(kept)
            return info
    dtype = next((a.i for a in rnd.attribute if a.name == "dtype"), onnx.TensorProto.FLOAT)
    return helper.make_tensor_value_info(rnd.output[0], dtype, None)


def _hoist_one(graph, scan, body, rnd, k: int, hoisted: dict) -> list[onnx.NodeProto]:
    """Outer nodes drawing ``rnd``'s noise for all iterations; rewires ``scan`` and ``body``.

    Only the template's shape matters, so a template computed from earlier draws (a dropout
    mask shaped like an activation of noisy inputs) is computed outside from those draws'
    templates (``hoisted``: body input name -> outer template name), which have their shape.
    """
    nodes = _slice(body, rnd.input[0], hoisted)
    if nodes is None:
        raise ExportError(
            f"random op '{rnd.name}' in the sample loop depends on the sample index; qbnn "
            "cannot draw it outside the loop (please report this model)"
        )
    tag = f"qbnn/hoist/{k}"
    rename = {o: f"{o}/{tag}" for n in nodes for o in n.output if o}
    rename.update(hoisted)
    used = {i for n in nodes for i in n.input} | {rnd.input[0]}
    for t in body.initializer:  # body constants the template reads move out with it
        if t.name in used:
            rename[t.name] = f"{t.name}/{tag}"
            copy = graph.initializer.add()
            copy.CopyFrom(t)
            copy.name = rename[t.name]
    out: list[onnx.NodeProto] = []
    for n in nodes:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        c.name = f"{n.name or n.op_type}/{tag}"
        c.input[:] = [rename.get(i, i) for i in c.input]
        c.output[:] = [rename.get(o, o) for o in c.output]
        out.append(c)
    states = len(scan.input) - _attr(scan, "num_scan_inputs").i
    template = rename.get(rnd.input[0], rnd.input[0])
    first_scan = scan.input[states]

    def name(s: str) -> str:
        return f"{tag}/{s}"

    out += [
        helper.make_node("Shape", [first_scan], [name("s")], name=name("s"), end=1),
        helper.make_node("Shape", [template], [name("shape")], name=name("shape")),
        helper.make_node(
            "Concat", [name("s"), name("shape")], [name("full")], axis=0, name=name("full")
        ),  # fmt: skip
        helper.make_node("Unsqueeze", [template, name("axis0")], [name("t1")], name=name("t1")),
        helper.make_node("Expand", [name("t1"), name("full")], [name("tiled")], name=name("tiled")),
    ]
    out.insert(0, helper.make_node("Constant", [], [name("axis0")], name=name("axis0"),
                                   value=helper.make_tensor("v", 7, [1], [0])))  # fmt: skip
    drawn = helper.make_node(OWNED_OP, [name("tiled")], [name("noise")], name=name("noise"))
    drawn.attribute.extend(a for a in rnd.attribute if a.name != "seed")
    out.append(drawn)
    scan.input.append(name("noise"))
    _attr(scan, "num_scan_inputs").i += 1
    for key in ("scan_input_axes", "scan_input_directions"):
        a = _attr(scan, key)
        if a is not None:
            a.ints.append(0)
    body.input.append(_input_info(graph, body, rnd))
    hoisted[rnd.output[0]] = template
    return out


def hoist_scan_noise(model: onnx.ModelProto) -> int:
    """Move every ``RandomUniformLike`` of each top-level ``Scan`` body to the outer graph
    (in place); returns the number moved. Raises :class:`ExportError` for a draw whose template
    changes from one iteration to the next."""
    graph = model.graph
    new: list[onnx.NodeProto] = []
    k = 0
    for node in graph.node:
        if node.op_type == "Scan":
            body = _attr(node, "body").g
            hoisted: dict[str, str] = {}
            for rnd in [n for n in body.node if n.op_type == OWNED_OP]:
                new.extend(_hoist_one(graph, node, body, rnd, k, hoisted))
                body.node.remove(rnd)
                k += 1
        new.append(node)
    del graph.node[:]
    graph.node.extend(new)
    return k


@dataclass(frozen=True)
class HoistScanNoise:
    """Pre: every random op is an owned ``RandomUniformLike`` (:class:`~.randomops.OwnRandomOps`
    ran) and Scan bodies are not yet self-contained. Post: no top-level ``Scan`` body holds a
    ``RandomUniformLike``; each moved draw is one outer ``[S, *shape]`` draw scanned into the
    body."""

    name = "hoist-scan-noise"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        return PassResult(model, hoist_scan_noise(model) > 0)
