"""Issue 12, section 3: quantize says what it did, and a result with nothing in int8 is not
labelled int8. The census is checked on a hand-built graph (exact counts and reasons) and on
real quantizations through the CLI (``qbnn.precision`` and the printed lines)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from qbnn.exporters import export
from qbnn.pipeline.cli import app
from qbnn.pipeline.quantize.census import already_quantized, quantized_ops, take_census

from tiny_models import bayes_mlp, example

runner = CliRunner()
RUNTIME = "weight computed at run time (sampled per MC draw; static int8 needs a constant)"


def _graph() -> onnx.ModelProto:
    """Three MatMuls: ``qdq`` (activation and weight through DequantizeLinear: int8),
    ``sampled`` (weight = mu * eps, mu stored in 8 bits by qbnn: fp32 compute) and ``kept``
    (a constant fp32 weight the caller excluded); plus a small fp32 bias.

    x [B, 4] -> qdq [B, 3]; x -> sampled [B, 4]; x -> kept [B, 2].
    """
    init = [
        numpy_helper.from_array(np.ones((4, 3), np.int8), "w_q"),
        numpy_helper.from_array(np.array(0.1, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
        numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
        numpy_helper.from_array(np.ones((4, 4), np.uint8), "mu_w8"),
        numpy_helper.from_array(np.array(0.01, np.float32), "mu_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "mu_zp"),
        numpy_helper.from_array(np.ones((4, 4), np.float32), "eps"),
        numpy_helper.from_array(np.ones((4, 2), np.float32), "w_kept"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="xq"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="xd"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"], name="wd"),
        helper.make_node("MatMul", ["xd", "wd"], ["y_qdq"], name="qdq"),
        helper.make_node(
            "DequantizeLinear", ["mu_w8", "mu_scale", "mu_zp"], ["mu"], name="qbnn/w8/mu"
        ),
        helper.make_node("Mul", ["mu", "eps"], ["w_s"], name="draw"),
        helper.make_node("MatMul", ["x", "w_s"], ["y_sampled"], name="sampled"),
        helper.make_node("MatMul", ["x", "w_kept"], ["y_kept"], name="kept"),
    ]
    outs = [("y_qdq", 3), ("y_sampled", 4), ("y_kept", 2)]
    graph = helper.make_graph(
        nodes,
        "census",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", d]) for n, d in outs],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.checker.check_model(model)
    return model


def test_census_counts_and_reasons_on_a_hand_built_graph():
    census = take_census(_graph(), {"kept": "listed in exclude_nodes"})
    assert census.int8_ops == {"MatMul (QDQ)": 1}
    assert census.int8_tensors == ("mu_w8", "w_q") and census.int8_values == 28
    assert census.fp32_ops == {"sampled": RUNTIME, "kept": "listed in exclude_nodes"}
    assert census.fp32_small == 2  # eps and w_kept (16 and 8 values)
    assert census.precision == "int8"
    lines = census.lines()
    assert lines[0] == "ops computing in int8: 1 (1 MatMul (QDQ))"
    assert lines[1] == "tensors stored in 8 bits: 2 (28 values)"
    assert "fp32: 1 op(s), listed in exclude_nodes: kept" in lines
    assert census.to_dict()["fp32_ops"] == {RUNTIME: 1, "listed in exclude_nodes": 1}
    expected = "it holds 4 int8 ops (3 DequantizeLinear, 1 QuantizeLinear)"
    assert already_quantized(_graph()) == expected


def test_census_walks_subgraphs():
    body = helper.make_graph(
        [helper.make_node("QLinearMatMul", list("abcdefgh"), ["y"], name="inner")],
        "then",
        [],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["y"], name="pass")],
        "else",
        [],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
    )
    node = helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=other)
    graph = helper.make_graph(
        [node],
        "outer",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
    )
    model = helper.make_model(graph)
    assert quantized_ops(model) == {"QLinearMatMul": 1}
    assert take_census(model).int8_ops == {"QLinearMatMul": 1}


@pytest.fixture(scope="module")
def mlps(tmp_path_factory):
    d = tmp_path_factory.mktemp("census")
    x = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
    np.savez(d / "calib.npz", x=x)
    models = {
        mode: export(bayes_mlp(), example((6,)), d / f"{mode}.onnx", sampling=mode, verify=False)
        for mode in ("weight", "lrt")
    }
    return d, models


def _precision(path) -> str:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}["qbnn.precision"]


def test_nothing_in_int8_is_not_labelled_int8(mlps, tmp_path):
    """A small weight-mode MLP: per-sample weights are computed at run time (no constant for
    static int8) and every posterior tensor is under 256 values (kept fp32)."""
    d, models = mlps
    out = tmp_path / "w.int8.onnx"
    args = ["quantize", str(models["weight"]), "--calib", str(d / "calib.npz"), "-o", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "ops computing in int8: 0 (none)" in r.stdout
    assert "tensors stored in 8 bits: 0 (0 values)" in r.stdout
    assert f"fp32: 2 op(s), {RUNTIME}" in r.stdout
    assert "small tensor(s) (< 256 values" in r.stdout
    assert "warning: nothing was quantized" in r.stderr
    assert "fp32 model (not int8) ->" in r.stdout and "int8 model ->" not in r.stdout
    assert _precision(out) == "fp32"


def test_int8_result_lists_its_int8_ops(mlps, tmp_path):
    d, models = mlps
    out = tmp_path / "l.int8.onnx"
    args = ["quantize", str(models["lrt"]), "--calib", str(d / "calib.npz"), "-o", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    first = r.stdout.splitlines()[0]
    assert first.startswith("ops computing in int8: ") and "(none)" not in first, first
    assert "int8 model ->" in r.stdout and "nothing was quantized" not in r.stderr
    assert _precision(out) == "int8"
