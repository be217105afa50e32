"""Blocked-layout (NCHWc) kernels for the sample loop's convolutions on ONNX Runtime's CPU EP.

ONNX Runtime's fastest fp32 CPU convolutions are MLAS's NCHWc kernels (activations in
channel blocks of 8 on AVX2, 16 on AVX-512; filters reordered to ``OIHWBiBo``). Its graph
optimizer (``NchwcTransformer``, level ``ALL``) only uses them for convolutions whose filter is
a constant, reordering the constant once. In the sample loop every convolution's filter is that
MC sample's weight, a run-time tensor, so the optimizer leaves it on the generic im2col path:
``benchmarks/results/conv_weights.md`` measured a run-time-weight Conv 1.69x slower than the
same Conv with a constant weight, and ``profile_modes.md`` puts 79 % of a ``weight``-mode
ResNet-20 run in such Convs.

:func:`nchwc_loop_convs` rewrites each eligible Conv inside a Scan/Loop body into
``ReorderInput -> com.microsoft.nchwc.Conv -> ReorderOutput`` and reorders the run-time filter
with graph ops (``Reshape -> Transpose -> Reshape``, a few thousand values per sample), so the
NCHWc kernel runs on it. A following inference BatchNormalization on constant parameters is
folded into the per-sample filter and bias (ONNX Runtime folds it only into constant filters)
and a following Relu becomes the NCHWc Conv's fused activation. The block size is read from
ONNX Runtime itself (:func:`block_size` lets it optimize a one-Conv model and checks which
reorder its filter matches), so the rewrite follows the machine the session runs on; where
ONNX Runtime has no NCHWc kernels (block size 0) nothing is rewritten. The rewrite is a
session-time, machine-specific step: the file on disk stays portable ONNX.
"""

from __future__ import annotations

import logging
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnxgraph import subgraphs, walk_nodes

__all__ = ["NCHWC_DOMAIN", "block_size", "nchwc_loop_convs", "reorder_filter"]

log = logging.getLogger("qbnn.runtime")

NCHWC_DOMAIN = "com.microsoft.nchwc"
_PERM = [0, 2, 4, 5, 3, 1]  # [O/b, b_o, I/b, b_i, kh, kw] -> [O/b, I/b, kh, kw, b_i, b_o]


def reorder_filter(w: np.ndarray, block: int) -> np.ndarray:
    """MLAS's ``OIHWBiBo`` filter order: ``w [O, I, kh, kw]`` float32 -> the same shape with
    the values in ``[O/b, I/b, kh, kw, b_i, b_o]`` order (``O`` and ``I`` multiples of ``b``)."""
    o, i, kh, kw = w.shape
    return (
        w.reshape(o // block, block, i // block, block, kh, kw)
        .transpose(_PERM)
        .reshape(o, i, kh, kw)
    )


@cache
def block_size() -> int:
    """The NCHWc channel block ONNX Runtime's CPU EP uses here (8 on AVX2, 16 on AVX-512), or 0
    when its optimizer does not produce NCHWc convolutions on this machine."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 32, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(so.optimized_model_filepath)
    if not any(n.domain == NCHWC_DOMAIN and n.op_type == "Conv" for n in opt.graph.node):
        return 0
    filters = [
        numpy_helper.to_array(t) for t in opt.graph.initializer if list(t.dims) == [32] * 2 + [3, 3]
    ]
    for block in (8, 16):
        if any(np.array_equal(f, reorder_filter(w, block)) for f in filters):
            return block
    return 0


def _static_shape(graph: onnx.GraphProto, name: str) -> list[int] | None:
    for vi in [*graph.input, *graph.value_info]:
        if vi.name == name:
            dims = vi.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                return [d.dim_value for d in dims]
            return None
    return None


def _eligible(node: onnx.NodeProto, graph: onnx.GraphProto, consts: set[str], block: int):
    """The filter shape ``[O, I, kh, kw]`` of a 2-D, ungrouped, non-pointwise Conv with a
    run-time filter and block-aligned channels, else None. Pointwise (1x1) convolutions are
    left alone: already plain GEMMs, they gain little, and each rewritten Conv reorders its
    activations in and out. Session-level A/B (``benchmarks/results/nchwc.md``): ResNet-20
    (all 3x3) 1.41x faster with the rewrite; ResNet-50 (mostly 1x1, its run dominated by
    drawing its 25M weight normals per sample) 1.04x, and with 1x1 rewritten too within
    run-to-run noise of that (an earlier run, before BatchNorm folding, had it slower).
    """
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    if node.input[1] in consts:
        return None  # a constant filter: ONNX Runtime's own optimizer handles it
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("group", 1) != 1:
        return None
    shape = _static_shape(graph, node.input[1])
    if shape is None or len(shape) != 4 or shape[0] % block or shape[1] % block:
        return None
    if shape[2] * shape[3] == 1:
        return None  # pointwise: already a plain GEMM; the activation reorders cost more
    return shape


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def _consumers(graph: onnx.GraphProto) -> dict[str, int]:
    """How many times each tensor is read: by nodes, subgraphs (conservatively, any name a
    subgraph mentions) and as a graph output."""
    count: dict[str, int] = {}
    for n in graph.node:
        names = list(n.input)
        names += {i for g in subgraphs(n) for m in walk_nodes(g) for i in m.input if i}
        for i in names:
            count[i] = count.get(i, 0) + 1
    for o in graph.output:
        count[o.name] = count.get(o.name, 0) + 1
    return count


class _Fusion:
    """What follows an eligible Conv and folds into it: an inference BatchNormalization on
    constant parameters (``y * a + c`` per channel, ``a = scale / sqrt(var + eps)``,
    ``c = B - mean * a``: folded into the per-sample filter and bias) and then a Relu (fused
    as the NCHWc Conv's activation). ``skip``: the nodes absorbed; ``output``: the tensor the
    rewritten Conv produces."""

    def __init__(self, conv: onnx.NodeProto, graph: onnx.GraphProto, uses, consumer) -> None:
        self.a = self.c = None
        self.relu = False
        self.skip: set[int] = set()
        self.output = conv.output[0]
        nxt = consumer.get(self.output)
        if nxt is not None and uses.get(self.output) == 1:
            i, node = nxt
            params = [_constant(graph, name) for name in node.input[1:5]]
            is_bn = node.op_type == "BatchNormalization" and len(node.output) == 1
            if is_bn and len(params) == 4 and all(p is not None for p in params):
                eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
                scale, bias, mean, var = (p.astype(np.float64) for p in params)
                a = scale / np.sqrt(var + eps)
                self.a, self.c = a.astype(np.float32), (bias - mean * a).astype(np.float32)
                self.skip.add(i)
                self.output = node.output[0]
        nxt = consumer.get(self.output)
        if nxt is not None and uses.get(self.output) == 1 and nxt[1].op_type == "Relu":
            self.relu = True
            self.skip.add(nxt[0])
            self.output = nxt[1].output[0]


def _rewrite(
    node: onnx.NodeProto, shape: list[int], block: int, tag: str, fuse: _Fusion
) -> tuple[list, list]:
    o, i, kh, kw = shape
    p = f"{node.name or node.output[0]}/nchwc"
    inits = [
        numpy_helper.from_array(
            np.array([o // block, block, i // block, block, kh, kw], np.int64), f"{p}/shape6_{tag}"
        ),
        numpy_helper.from_array(np.array(shape, np.int64), f"{p}/shape4_{tag}"),
    ]
    nodes = []
    weight, bias = node.input[1], node.input[2] if len(node.input) > 2 and node.input[2] else None
    if fuse.a is not None:
        inits.append(numpy_helper.from_array(fuse.a.reshape(o, 1, 1, 1), f"{p}/bn_a4_{tag}"))
        inits.append(numpy_helper.from_array(fuse.c, f"{p}/bn_c_{tag}"))
        nodes.append(helper.make_node("Mul", [weight, inits[-2].name], [f"{p}/wf"], name=f"{p}/wf"))
        weight = f"{p}/wf"
        if bias is None:
            bias = inits[-1].name
        else:
            inits.append(numpy_helper.from_array(fuse.a, f"{p}/bn_a_{tag}"))
            nodes.append(
                helper.make_node("Mul", [bias, inits[-1].name], [f"{p}/ba"], name=f"{p}/ba")
            )
            nodes.append(
                helper.make_node("Add", [f"{p}/ba", f"{p}/bn_c_{tag}"], [f"{p}/bf"], name=f"{p}/bf")
            )
            bias = f"{p}/bf"
    nodes += [
        helper.make_node("Reshape", [weight, inits[0].name], [f"{p}/w6"], name=f"{p}/w6"),
        helper.make_node("Transpose", [f"{p}/w6"], [f"{p}/w6t"], perm=_PERM, name=f"{p}/perm"),
        helper.make_node("Reshape", [f"{p}/w6t", inits[1].name], [f"{p}/w"], name=f"{p}/w"),
        helper.make_node(
            "ReorderInput", [node.input[0]], [f"{p}/x"], name=f"{p}/x", domain=NCHWC_DOMAIN
        ),
    ]
    inputs = [f"{p}/x", f"{p}/w"] + ([bias] if bias else [])
    conv = helper.make_node("Conv", inputs, [f"{p}/y"], name=f"{p}/conv", domain=NCHWC_DOMAIN)
    conv.attribute.extend(node.attribute)
    if fuse.relu:
        conv.attribute.append(helper.make_attribute("activation", "Relu"))
    nodes.append(conv)
    nodes.append(
        helper.make_node(
            "ReorderOutput",
            [f"{p}/y"],
            [fuse.output],
            name=f"{p}/y",
            domain=NCHWC_DOMAIN,
            channels=o,
        )
    )
    return nodes, inits


def _walk(graph: onnx.GraphProto, block: int, inside: bool, counter: list[int]) -> None:
    consts = {t.name for t in graph.initializer}
    consts |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    uses = _consumers(graph)
    consumer = {}  # tensor -> (index, node) of its first consumer
    for idx, n in enumerate(graph.node):
        for name in n.input:
            consumer.setdefault(name, (idx, n))
    out: list[onnx.NodeProto] = []
    skip: set[int] = set()
    for idx, node in enumerate(graph.node):
        if idx in skip:
            continue
        for sub in subgraphs(node):
            _walk(sub, block, True, counter)
        shape = _eligible(node, graph, consts, block) if inside else None
        if shape is None:
            out.append(node)
            continue
        fuse = _Fusion(node, graph, uses, consumer)
        skip |= fuse.skip
        nodes, inits = _rewrite(node, shape, block, str(counter[0]), fuse)
        counter[0] += 1
        out.extend(nodes)
        graph.initializer.extend(inits)
    del graph.node[:]
    graph.node.extend(out)


def nchwc_loop_convs(model: onnx.ModelProto, block: int | None = None) -> int:
    """Rewrite, in place, every Conv inside a Scan / Loop / If body whose filter is a run-time
    tensor (2-D, not 1x1, ``group == 1``, input and output channels multiples of the block)
    into ONNX Runtime's NCHWc form; returns the number of Convs rewritten (0 when ``block`` is 0).

    ``block``: the channel block (default :func:`block_size`). The result runs on ONNX
    Runtime's CPU EP only (``com.microsoft.nchwc`` ops) and computes the same values as the
    original graph up to float summation order.
    """
    block = block_size() if block is None else block
    if not block:
        return 0
    counter = [0]
    _walk(model.graph, block, False, counter)
    if counter[0] and not any(o.domain == NCHWC_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(NCHWC_DOMAIN, 1))
    if counter[0]:
        log.info("NCHWc kernels for %d sample-loop convolutions (block %d)", counter[0], block)
    return counter[0]
