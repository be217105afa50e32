"""``split_report``: ops and FLOPs run once per call vs per MC sample (issue 21, item 4).

Hand-built graphs with a known split (FLOPs computed by hand below), then two exported graphs:
a laplace last-layer graph (body once) and a whole-network weight-mode graph (all per sample).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qbnn.runtimes import SplitReport, split_report
from qbnn.runtimes.errors import ConfigError

S0 = 4  # export-time default S in the hand-built graphs (the report is asked for other S)


def _init(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _model(nodes, inits, x_shape, outputs) -> onnx.ModelProto:
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *x_shape]),
        helper.make_tensor_value_info("num_samples", TensorProto.INT64, []),
    ]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    graph = helper.make_graph(nodes, "g", inputs, outs, [*inits, _init("num_samples", S0)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _tiled() -> onnx.ModelProto:
    """Conv + Relu on [B, 3, 8, 8] (once), the features tiled to [S*B, 256] by an Expand whose
    shape comes from num_samples, then RandomUniformLike dropout and a Gemm (per sample)."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Unsqueeze", ["f", "axis0"], ["f1"]),
        helper.make_node("Reshape", ["num_samples", "one"], ["s1"]),
        helper.make_node("Concat", ["s1", "ones2"], ["shape"], axis=0),
        helper.make_node("Expand", ["f1", "shape"], ["t3"]),
        helper.make_node("Reshape", ["t3", "rows"], ["t"]),
        helper.make_node("RandomUniformLike", ["t"], ["u"], seed=1.0),
        helper.make_node("Greater", ["u", "p"], ["keep"]),
        helper.make_node("Cast", ["keep"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["t", "mask"], ["dm"]),
        helper.make_node("Mul", ["dm", "scale"], ["d"]),
        helper.make_node("Gemm", ["d", "w2", "b2"], ["logits"]),
    ]
    inits = [
        _init("w1", rng.normal(size=(4, 3, 3, 3)).astype(f32)),
        _init("axis0", np.array([0], np.int64)),
        _init("one", np.array([1], np.int64)),
        _init("ones2", np.array([1, 1], np.int64)),
        _init("rows", np.array([-1, 256], np.int64)),
        _init("p", np.array(0.5, f32)),
        _init("scale", np.array(2.0, f32)),
        _init("w2", rng.normal(size=(256, 10)).astype(f32)),
        _init("b2", np.zeros(10, f32)),
    ]
    return _model(nodes, inits, (3, 8, 8), ["logits"])


def test_tiled_graph_split_matches_hand_count():
    b, s = 5, 32
    rep = split_report(_tiled(), b, s)
    # once: Conv 2*Cin*kH*kW*Cout*outH*outW per row, Relu one per element
    conv = 2 * 3 * 3 * 3 * 4 * 8 * 8 * b
    relu = 4 * 8 * 8 * b
    assert rep.flops_once == conv + relu
    # per sample, on S*B rows of 256: RandomUniformLike, Greater, 2 Mul (one per element each),
    # Gemm 2*M*K*N
    rows = s * b
    assert rep.flops_per_sample == 4 * rows * 256 + 2 * rows * 256 * 10
    # Conv, Relu, Flatten, Unsqueeze | the other 10 (shape arithmetic from num_samples included)
    assert (rep.ops_once, rep.ops_per_sample) == (4, 10)
    assert rep.fraction_once == pytest.approx((conv + relu) / (conv + relu + rep.flops_per_sample))
    assert rep.notes == ()


def test_leading_dim_s_times_b_counts_per_sample():
    """A tile with constant repeats (S fixed at export, not from num_samples): the Relu on the
    [S*B, 6] rows is per sample by its shape; the Relu before the Tile runs once."""
    b = 3
    nodes = [
        helper.make_node("Relu", ["input"], ["r"]),
        helper.make_node("Tile", ["r", "reps"], ["t"]),
        helper.make_node("Relu", ["t"], ["y"]),
    ]
    m = _model(nodes, [_init("reps", np.array([S0, 1], np.int64))], (6,), ["y"])
    rep = split_report(m, b, S0)
    assert (rep.flops_once, rep.flops_per_sample) == (b * 6, S0 * b * 6)
    assert (rep.ops_once, rep.ops_per_sample) == (1, 2)


def _scan() -> onnx.ModelProto:
    """h = x @ A once; W_s = mu + sigma * eps_s ([S, 6, 5], eps from RandomNormalLike); a Scan
    over the S draws whose body is y_s = relu(h @ W_s); mean over samples."""
    f32 = np.float32
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h", "w_i"], ["z"]),
            helper.make_node("Relu", ["z"], ["y_i"]),
        ],
        "body",
        [helper.make_tensor_value_info("w_i", TensorProto.FLOAT, [6, 5])],
        [helper.make_tensor_value_info("y_i", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("MatMul", ["input", "a"], ["h"]),
        helper.make_node("Reshape", ["num_samples", "one"], ["s1"]),
        helper.make_node("Concat", ["s1", "ones2"], ["shape"], axis=0),
        helper.make_node("Expand", ["zeros", "shape"], ["z0"]),
        helper.make_node("RandomNormalLike", ["z0"], ["eps"], seed=2.0),
        helper.make_node("Mul", ["eps", "sigma"], ["se"]),
        helper.make_node("Add", ["se", "mu"], ["w"]),
        helper.make_node("Scan", ["w"], ["ys"], body=body, num_scan_inputs=1),
        helper.make_node("ReduceMean", ["ys", "axis0"], ["mean"], keepdims=0),
    ]
    inits = [
        _init("a", np.eye(6, dtype=f32)),
        _init("one", np.array([1], np.int64)),
        _init("ones2", np.array([1, 1], np.int64)),
        _init("zeros", np.zeros((1, 6, 5), f32)),
        _init("sigma", np.full((6, 5), 0.1, f32)),
        _init("mu", np.ones((6, 5), f32)),
        _init("axis0", np.array([0], np.int64)),
    ]
    return _model(nodes, inits, (6,), ["mean"])


def test_scan_body_counts_per_sample_times_s():
    b, s = 7, 16
    rep = split_report(_scan(), b, s)
    assert rep.flops_once == 2 * b * 6 * 6  # the MatMul before the loop
    draws = 3 * s * 6 * 5  # RandomNormalLike, Mul, Add on [S, 6, 5]
    body = s * (2 * b * 6 * 5 + b * 5)  # MatMul + Relu, once per iteration
    mean = s * b * 5  # ReduceMean reads [S, B, 5]
    assert rep.flops_per_sample == draws + body + mean
    # MatMul | Reshape, Concat, Expand, RandomNormalLike, Mul, Add, Scan, ReduceMean + 2 in body
    assert (rep.ops_once, rep.ops_per_sample) == (1, 10)


def test_summary_line_and_errors():
    rep = SplitReport(
        batch=32, samples=32, ops_once=12, ops_per_sample=28, flops_once=97, flops_per_sample=3
    )
    assert rep.summary().startswith(
        "deterministic prefix: 97 % of FLOPs run once (12 of 40 ops); per-sample part: 3 % x S=32"
    )
    assert rep.to_dict()["fraction_once"] == pytest.approx(0.97)
    with pytest.raises(ConfigError, match="batch >= 1, got 0"):
        split_report(_scan(), 0, 8)
    with pytest.raises(ConfigError, match="samples >= 1, got -1"):
        split_report(_scan(), 4, -1)


def _laplace_conv(tmp_path):
    """Last-layer Kronecker Laplace on a conv body with pooled features (the body does nearly
    all the work, as in a ResNet): exported body-once."""
    import torch
    from torch import nn

    from qbnn.exporters import export_model

    from tiny_models import example
    from trainers import laplace

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3),
    )  # fmt: skip
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 3, (32,))
    la = laplace(net, x, y, "classification", "last_layer", "kron")
    res = export_model(la, example((3, 16, 16)), tmp_path / "la.onnx", seed=0, verify=False)
    return onnx.load(str(res.path))


def test_exported_laplace_last_layer_runs_its_body_once(tmp_path):
    rep = split_report(_laplace_conv(tmp_path), 32, 32)
    # the two convolutions on [32, *, 16, 16]: 2*(3*9*16 + 16*9*16)*256*32 FLOPs, all once
    convs = 2 * (3 * 9 * 16 + 16 * 9 * 16) * 256 * 32
    assert rep.flops_once >= convs
    assert rep.fraction_once > 0.9, rep.summary()


def test_exported_whole_network_weight_mode_runs_everything_per_sample(tmp_path):
    from qbnn.exporters import export_model

    from tiny_models import bayes_cnn, example

    res = export_model(
        bayes_cnn(), example((1, 8, 8)), tmp_path / "w.onnx", sampling="weight", seed=0,
        verify=False,
    )  # fmt: skip
    rep = split_report(onnx.load(str(res.path)), 32, 8)
    # the Scan body is the whole network: conv [32, 4, 4, 4] from 1x3x3 per output, x S
    assert rep.flops_per_sample >= 8 * 2 * 9 * 4 * 4 * 4 * 32
    assert rep.fraction_once < 0.01, rep.summary()


def test_unknown_shapes_are_completed_from_operands(tmp_path, monkeypatch):
    """An op no shape inference knows (custom domain) leaves its output unknown: the tiled rows
    become S*B (per sample, from the data input), the feature axis comes from its input, and the
    Gemm's output is computed from its operands: 2*S*B*6*5 FLOPs, and a note says so."""
    b, s = 3, 8
    nodes = [
        helper.make_node("Unsqueeze", ["input", "axis0"], ["x1"]),
        helper.make_node("Reshape", ["num_samples", "one"], ["s1"]),
        helper.make_node("Concat", ["s1", "ones2"], ["shape"], axis=0),
        helper.make_node("Expand", ["x1", "shape"], ["t3"]),
        helper.make_node("Reshape", ["t3", "rows"], ["t"]),
        helper.make_node("Opaque", ["t"], ["u"], domain="qbnn.test"),
        helper.make_node("Gemm", ["u", "w"], ["y"]),
    ]
    inits = [
        _init("axis0", np.array([0], np.int64)),
        _init("one", np.array([1], np.int64)),
        _init("ones2", np.array([1, 1], np.int64)),
        _init("rows", np.array([-1, 6], np.int64)),
        _init("w", np.ones((6, 5), np.float32)),
    ]
    m = _model(nodes, inits, (6,), ["y"])
    m.opset_import.append(helper.make_opsetid("qbnn.test", 1))
    monkeypatch.chdir(tmp_path)  # ORT's infer_shapes would save an incomplete model here
    rep = split_report(m, b, s)
    assert list(tmp_path.iterdir()) == []
    assert (rep.flops_once, rep.flops_per_sample) == (0, 2 * s * b * 6 * 5)
    assert any("unknown dimensions" in n for n in rep.notes), rep.notes
