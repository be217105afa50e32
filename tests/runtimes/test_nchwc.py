"""NCHWc kernels for the sample loop's run-time-weight convolutions (``qbnn.runtimes.nchwc``):
exact structure of the rewrite, what it leaves alone, and equal outputs (float summation order
only) on ONNX Runtime's CPU EP, for a hand-built Scan and for an exported weight-mode BNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from bayesian_torch.layers import Conv2dReparameterization, LinearReparameterization
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from qbnn.exporters import export
from qbnn.runtimes import Predictor, PredictorOptions, SessionOptions
from qbnn.runtimes.nchwc import NCHWC_DOMAIN, block_size, nchwc_loop_convs, reorder_filter

BLOCK = block_size()
needs_nchwc = pytest.mark.skipif(BLOCK == 0, reason="ONNX Runtime has no NCHWc kernels here")


def _loop(c_in=16, c_out=16, k=3, group=1, const_filter=False, s=3):
    """``input [B, c_in, 6, 6]``; Scan over ``w [S, c_out, c_in/group, k, k]``; body: one Conv
    (stride 1, pad k//2) on the carried input with that sample's filter."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((s, c_out, c_in // group, k, k)).astype(np.float32)
    wname = "w_const" if const_filter else "w_s"
    body_inits = [numpy_helper.from_array(w[0], "w_const")] if const_filter else []
    p = k // 2
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["x_in"], ["x_out"]),
            helper.make_node("Conv", ["x_in", wname], ["y"], pads=[p] * 4, group=group, name="c"),
        ],
        "body",
        [
            helper.make_tensor_value_info("x_in", TensorProto.FLOAT, ["B", c_in, 6, 6]),
            helper.make_tensor_value_info("w_s", TensorProto.FLOAT, list(w.shape[1:])),
        ],
        [
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, ["B", c_in, 6, 6]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", c_out, 6, 6]),
        ],
        body_inits,
    )
    scan = helper.make_node("Scan", ["input", "w"], ["x_final", "ys"], body=body, num_scan_inputs=1)
    g = helper.make_graph(
        [scan],
        "g",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", c_in, 6, 6]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w.shape)),
        ],
        [helper.make_tensor_value_info("ys", TensorProto.FLOAT, None)],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), w


def _run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(["ys"], feed)[0]


def test_reorder_filter_is_mlas_oihwbibo():
    """Element [o, i, y, x] lands at block (o//b, i//b), position (y, x, i%b, o%b)."""
    b = 8
    w = np.arange(16 * 16 * 3 * 3, dtype=np.float32).reshape(16, 16, 3, 3)
    r = reorder_filter(w, b).reshape(2, 2, 3, 3, b, b)
    assert r[1, 0, 2, 1, 3, 5] == w[8 + 5, 0 + 3, 2, 1]
    assert sorted(r.ravel()) == sorted(w.ravel())


@needs_nchwc
def test_loop_conv_becomes_reorder_nchwc_conv_reorder_with_equal_outputs():
    model, w = _loop()
    x = np.random.default_rng(1).standard_normal((4, 16, 6, 6)).astype(np.float32)
    ref = _run(model, {"input": x, "w": w})
    assert nchwc_loop_convs(model) == 1
    body = model.graph.node[0].attribute[0].g
    ops = [(n.domain, n.op_type) for n in body.node]
    assert ops == [
        ("", "Identity"),
        ("", "Reshape"),
        ("", "Transpose"),
        ("", "Reshape"),
        (NCHWC_DOMAIN, "ReorderInput"),
        (NCHWC_DOMAIN, "Conv"),
        (NCHWC_DOMAIN, "ReorderOutput"),
    ]
    assert body.node[-1].output == ["y"]  # the Conv's output name is kept
    assert any(o.domain == NCHWC_DOMAIN for o in model.opset_import)
    np.testing.assert_allclose(_run(model, {"input": x, "w": w}), ref, rtol=1e-5, atol=1e-4)


def _with_bn_relu(model: onnx.ModelProto, c: int) -> None:
    """Append ``BatchNormalization -> Relu`` (constant, non-trivial parameters) after the body's
    Conv, in place."""
    body = model.graph.node[0].attribute[0].g
    rng = np.random.default_rng(2)
    params = {
        "bn_scale": rng.uniform(0.5, 2.0, c),
        "bn_b": rng.normal(0, 0.5, c),
        "bn_mean": rng.normal(0, 0.5, c),
        "bn_var": rng.uniform(0.5, 2.0, c),
    }
    body.initializer.extend(
        numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()
    )
    body.node[1].output[0] = "conv_out"
    body.node.extend(
        [
            helper.make_node("BatchNormalization", ["conv_out", *params], ["bn_out"], epsilon=1e-5),
            helper.make_node("Relu", ["bn_out"], ["y"]),
        ]
    )


@needs_nchwc
def test_batchnorm_and_relu_after_a_loop_conv_fold_into_it():
    """BatchNormalization on constants folds into the per-sample filter and bias
    (``a = scale / sqrt(var + eps)``, ``c = B - mean * a``) and the Relu becomes the NCHWc
    Conv's activation; outputs equal the unrewritten graph's."""
    model, w = _loop()
    _with_bn_relu(model, 16)
    x = np.random.default_rng(1).standard_normal((4, 16, 6, 6)).astype(np.float32)
    ref = _run(model, {"input": x, "w": w})
    assert nchwc_loop_convs(model) == 1
    body = model.graph.node[0].attribute[0].g
    ops = [n.op_type for n in body.node]
    assert "BatchNormalization" not in ops and "Relu" not in ops
    conv = next(n for n in body.node if n.domain == NCHWC_DOMAIN and n.op_type == "Conv")
    assert (
        helper.get_attribute_value(next(a for a in conv.attribute if a.name == "activation"))
        == b"Relu"
    )
    assert body.node[-1].output == ["y"]
    assert (ref > 0).mean() < 0.9 and (ref == 0).any()  # the Relu matters for this input
    np.testing.assert_allclose(_run(model, {"input": x, "w": w}), ref, rtol=1e-4, atol=1e-4)


@needs_nchwc
@pytest.mark.parametrize(
    "kwargs",
    [
        {"k": 1},  # pointwise: measured slower rewritten (benchmarks/results/nchwc.md)
        {"group": 2},  # grouped
        {"c_in": 12},  # channels not a multiple of the block
        {"const_filter": True},  # ONNX Runtime's own optimizer handles constant filters
    ],
)
def test_convs_the_rewrite_leaves_alone(kwargs):
    model, _ = _loop(**kwargs)
    assert nchwc_loop_convs(model) == 0
    assert not any(o.domain == NCHWC_DOMAIN for o in model.opset_import)


def test_block_zero_rewrites_nothing():
    model, _ = _loop()
    assert nchwc_loop_convs(model, block=0) == 0


class _Net(nn.Module):
    """Bayesian CNN with a 16 -> 16 3x3 convolution + BatchNorm + Relu in the middle (eligible,
    folded and fused), [B, 1, 6, 6]."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = Conv2dReparameterization(1, 16, 3, padding=1, posterior_rho_init=-3.0)
        self.c2 = Conv2dReparameterization(16, 16, 3, padding=1, posterior_rho_init=-3.0)
        self.bn = nn.BatchNorm2d(16)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2.0)
        self.fc = LinearReparameterization(16 * 36, 4, posterior_rho_init=-3.0)

    def forward(self, x):
        h = torch.relu(self.c1(x)[0])
        h = torch.relu(self.bn(self.c2(h)[0]))
        return self.fc(h.flatten(1))[0]


@needs_nchwc
def test_weight_mode_graph_on_the_cpu_provider_uses_nchwc_with_unchanged_outputs(tmp_path):
    """Same seed, full optimization (rewrite on) vs extended (no NCHWc anywhere): the MC
    probabilities agree to float rounding (1e-4), so the rewrite changes no sample."""
    torch.manual_seed(0)
    x = torch.randn(6, 1, 6, 6)
    path = export(_Net().eval(), x, tmp_path / "w.onnx", sampling="weight", seed=0)
    runs = {}
    for level in ("all", "extended"):
        opts = PredictorOptions(session=SessionOptions(graph_optimization_level=level))
        pred = Predictor(path, provider="cpu", seed=4, options=opts)
        runs[level] = pred.predict(x.numpy(), 16, return_samples=True).probs
    assert runs["all"].std(0).mean() > 1e-3  # samples differ: the check is not vacuous
    np.testing.assert_allclose(runs["all"], runs["extended"], atol=1e-4)
    rewritten = onnx.load(str(path))
    assert nchwc_loop_convs(rewritten) == 1  # c2 only: c1 has one input channel
    scan = next(n for n in rewritten.graph.node if n.op_type == "Scan")
    body_ops = [n.op_type for n in scan.attribute[0].g.node]
    assert "BatchNormalization" not in body_ops  # folded into c2's per-sample filter


def test_the_rewrite_is_active_on_x86_cpus_with_avx2():
    """ONNX Runtime's MLAS has NCHWc kernels on AVX2 and AVX-512 CPUs; the probe must find the
    filter layout it checks there (a layout change in ONNX Runtime turns the rewrite off, and
    this test says so)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    if " avx2" not in flags:
        pytest.skip("no AVX2")
    assert BLOCK in (8, 16)
