"""Each exporter graph pass on a five-node graph, asserting the exact structure it produces, and
the one declared order they run in (``qbnn.exporters.passes.order``)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qbnn.exporters.passes import SPLIT_PASSES, run_passes
from qbnn.exporters.passes.finalize import (
    AttachNumSamples,
    NameNodes,
    Reseed,
    SelfContainedScans,
    SetMetadata,
    StripTracingMetadata,
    finalize_passes,
)
from qbnn.exporters.passes.hoist import HoistScanNoise
from qbnn.exporters.passes.order import export_passes
from qbnn.exporters.passes.randomops import CheckRandomOps, OwnRandomOps
from qbnn.runtimes.errors import ExportError

TEMPLATE = "qbnn_sample_template"


def five_nodes(random_op: str = "RandomUniformLike") -> onnx.ModelProto:
    """``y = relu((x + u) * w)`` with ``u = random_op(x)``, and ``t = Identity(template)``;
    nodes 0, 1 and 3 unnamed, nodes 2 and 4 both named ``mul``; one unused initializer."""
    nodes = [
        helper.make_node(random_op, ["x"], ["u"], dtype=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "u"], ["a"]),
        helper.make_node("Mul", ["a", "w"], ["m"], name="mul"),
        helper.make_node("Identity", [TEMPLATE], ["t"]),
        helper.make_node("Relu", ["m"], ["y"], name="mul"),
    ]
    nodes[1].doc_string = "torch stack trace"
    nodes[1].metadata_props.add(key="pkg.torch.onnx.stack_trace", value="File model.py")
    graph = helper.make_graph(
        nodes,
        "five",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3]),
            helper.make_tensor_value_info(TEMPLATE, TensorProto.FLOAT, ["S"]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3]),
            helper.make_tensor_value_info("t", TensorProto.FLOAT, ["S"]),
        ],
        [
            numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float32), "w"),
            numpy_helper.from_array(np.zeros(2, np.float32), "unused"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.add(key="kept", value="1")
    return model


def test_attach_num_samples():
    model = five_nodes()
    result = AttachNumSamples(TEMPLATE)(model)
    g = result.model.graph
    assert result.modified and result.notes == ()
    assert [i.name for i in g.input] == ["x", "num_samples"]
    assert g.input[1].type.tensor_type.elem_type == TensorProto.INT64
    assert len(g.input[1].type.tensor_type.shape.dim) == 0  # a scalar
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    assert "num_samples" not in inits  # a plain input (contract format 2): callers feed it
    assert inits["qbnn_shape_1"].tolist() == [1]
    assert [(n.name, n.op_type, list(n.input), list(n.output)) for n in g.node[:2]] == [
        ("qbnn/num_samples/reshape", "Reshape", ["num_samples", "qbnn_shape_1"],
         ["qbnn_num_samples_1d"]),
        ("qbnn/num_samples/template", "ConstantOfShape", ["qbnn_num_samples_1d"], [TEMPLATE]),
    ]  # fmt: skip
    assert [n.op_type for n in g.node[2:]] == [
        "RandomUniformLike",
        "Add",
        "Mul",
        "Identity",
        "Relu",
    ]
    with pytest.raises(ValueError, match="graph has no input named 'nope'"):
        AttachNumSamples("nope")(five_nodes())


def test_strip_tracing_metadata_keeps_model_metadata():
    result = StripTracingMetadata()(five_nodes())
    node = result.model.graph.node[1]
    assert (node.doc_string, len(node.metadata_props)) == ("", 0)
    assert [(p.key, p.value) for p in result.model.metadata_props] == [("kept", "1")]


def test_self_contained_scans_drops_unused_initializers():
    result = SelfContainedScans()(five_nodes())
    assert [t.name for t in result.model.graph.initializer] == ["w"]
    assert len(result.model.graph.node) == 5


def test_name_nodes():
    result = NameNodes()(five_nodes())
    assert [n.name for n in result.model.graph.node] == [
        "qbnn/random/0",
        "Add_1",
        "mul",
        "Identity_3",
        "mul_4",
    ]


def _seeds(model: onnx.ModelProto) -> list[float]:
    return [a.f for n in model.graph.node for a in n.attribute if a.name == "seed"]


def test_reseed():
    unchanged = Reseed(None)(NameNodes()(five_nodes()).model)
    assert not unchanged.modified and _seeds(unchanged.model) == []
    a = Reseed(5)(NameNodes()(five_nodes()).model)
    b = Reseed(5)(NameNodes()(five_nodes()).model)
    assert a.modified and len(_seeds(a.model)) == 1 and _seeds(a.model) == _seeds(b.model)
    assert _seeds(Reseed(6)(NameNodes()(five_nodes()).model).model) != _seeds(a.model)


def test_set_metadata():
    result = SetMetadata({"qbnn.task": "classification", "kept": "2"})(five_nodes())
    assert result.modified
    assert {p.key: p.value for p in result.model.metadata_props} == {
        "kept": "2",
        "qbnn.task": "classification",
    }
    assert not SetMetadata({})(five_nodes()).modified


def test_own_random_ops_rewrites_a_normal_draw():
    result = OwnRandomOps()(five_nodes("RandomNormalLike"))
    ops = [n.op_type for n in result.model.graph.node]
    assert result.modified and len(result.notes) == 1 and "RandomNormalLike" in result.notes[0]
    assert "RandomNormalLike" not in ops and ops.count("RandomUniformLike") == 2  # Box-Muller
    assert not OwnRandomOps()(five_nodes()).modified  # already qbnn's op


def test_hoist_scan_noise_leaves_a_graph_without_scan():
    result = HoistScanNoise()(five_nodes())
    assert not result.modified and len(result.model.graph.node) == 5


def test_check_random_ops_is_a_guard():
    with pytest.raises(ExportError, match="holds 1 random op"):
        CheckRandomOps()(five_nodes())  # not yet named qbnn/random/<i>
    named = NameNodes()(five_nodes()).model
    result = CheckRandomOps()(named)
    assert not result.modified and result.model is named


def test_the_declared_order():
    passes = export_passes(TEMPLATE, 3, {"qbnn.task": "classification"})
    assert [p.name for p in passes] == [
        "own-random-ops",
        "hoist-scan-noise",
        *(p.name for p in finalize_passes(TEMPLATE, 3, {})),
        *(p.name for p in SPLIT_PASSES),
        "check-random-ops",
    ]
    assert [p.name for p in finalize_passes(TEMPLATE, 3, {})] == [
        "attach-num-samples",
        "strip-tracing-metadata",
        "self-contained-scans",
        "name-nodes",
        "reseed",
        "set-metadata",
    ]


def test_all_passes_give_a_valid_seeded_graph():
    """The five-node graph through every pass runs on ONNX Runtime; the seed fixes its noise."""
    passes = export_passes(TEMPLATE, 7, {"qbnn.task": "classification"})
    result = run_passes(five_nodes("RandomNormalLike"), passes)
    onnx.checker.check_model(result.model)
    assert result.modified
    # one note from the random-op rewrite, then at most one per split pass that changed the graph
    assert result.notes[0] == (
        "RandomNormalLike from the model's forward rewritten to qbnn's RandomUniformLike noise"
    )
    split_names = {p.name for p in SPLIT_PASSES}
    assert all(n.split(":")[0] in split_names for n in result.notes[1:]), result.notes
    x = np.ones((2, 3), np.float32)
    outs = []
    for _ in range(2):  # two sessions, as two processes would open the file
        sess = ort.InferenceSession(
            result.model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        outs.append(sess.run(None, {"x": x, "num_samples": np.array(4, np.int64)}))
    (y1, t1), (y2, _) = outs
    assert t1.shape == (4,) and y1.shape == (2, 3)
    assert np.array_equal(y1, y2)  # seeded: the same noise in every session
