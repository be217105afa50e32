"""ONNX graph edits applied after ``torch.onnx.export``.

* the sample-template input becomes ``ConstantOfShape(Reshape(num_samples, [1]))`` so S is an
  int64 scalar input ``num_samples`` with an overridable initializer holding the default;
* every node gets a unique name (INC requires it) and random nodes get readable names;
* optional seeds on the random nodes; ``qbnn.*`` metadata.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qbnn.runtimes.contract import NUM_SAMPLES
from qbnn.runtimes.loading import set_metadata
from qbnn.runtimes.seeding import RANDOM_OPS, reseed

__all__ = ["attach_num_samples", "finalize", "name_nodes"]


def attach_num_samples(model: onnx.ModelProto, template_name: str, default: int) -> None:
    """Replace float input ``template_name [S]`` by the int64 scalar input ``num_samples``."""
    g = model.graph
    kept = [i for i in g.input if i.name != template_name]
    if len(kept) == len(g.input):
        raise ValueError(f"graph has no input named {template_name!r}")
    del g.input[:]
    g.input.extend(kept)
    g.input.append(helper.make_tensor_value_info(NUM_SAMPLES, TensorProto.INT64, []))
    g.initializer.append(numpy_helper.from_array(np.array(default, dtype=np.int64), NUM_SAMPLES))
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


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique, non-empty name; random nodes become ``qbnn/random/<i>``."""
    seen: set[str] = set()
    r = 0
    for i, node in enumerate(model.graph.node):
        if node.op_type in RANDOM_OPS:
            node.name = f"qbnn/random/{r}"
            r += 1
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


def finalize(
    model: onnx.ModelProto,
    template_name: str,
    default_samples: int,
    seed: int | None,
    meta: dict[str, str],
) -> None:
    """All post-export edits, in place."""
    attach_num_samples(model, template_name, default_samples)
    name_nodes(model)
    if seed is not None:
        reseed(model, seed)
    set_metadata(model, meta)
