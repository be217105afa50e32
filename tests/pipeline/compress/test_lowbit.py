"""4-bit packing round trip, container choice, and ONNX Runtime running the opset-21 graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qbnn.pipeline.compress.lowbit import (
    activation_grid,
    container,
    ensure_opset,
    insert_activation_qdq,
    replace_with_dq,
    weight_grid,
)

from compress_tiny import run

EXACT = {"session.qdq_matmulnbits_accuracy_level": "0"}


EXACT = {"session.qdq_matmulnbits_accuracy_level": "0"}


def _matmul_model(w: np.ndarray) -> onnx.ModelProto:
    """``out = input @ w`` with ``w`` an initializer; ``input [B, K]``."""
    g = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["out"], name="mm")],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", w.shape[0]])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", w.shape[1]])],
        [numpy_helper.from_array(w, "w")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    ensure_opset(m)
    return m


@pytest.mark.parametrize(("lo", "hi", "shape"), [(-8, 7, (5, 3)), (0, 15, (4, 4)), (-2, 2, (7,))])
def test_pack4_round_trip_through_onnx(lo, hi, shape, tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.integers(lo, hi + 1, size=shape)
    w = np.zeros(shape if len(shape) == 2 else (1, shape[0]), np.float32)
    m = _matmul_model(w)
    scale = np.float32(0.25)
    stored = replace_with_dq(m, "w", codes.reshape(w.shape), np.asarray(scale))
    q = next(i for i in m.graph.initializer if i.name == "w__q")
    assert q.data_type in (TensorProto.INT4, TensorProto.UINT4)
    assert stored == (codes.size + 1) // 2  # two codes per byte
    tp, zp, _, _ = container(codes)
    np.testing.assert_array_equal(
        numpy_helper.to_array(q).astype(np.int64) - zp, codes.reshape(w.shape)
    )
    onnx.checker.check_model(m)
    onnx.save(m, tmp_path / "m.onnx")
    x = rng.random((3, w.shape[0])).astype(np.float32)
    out = run(tmp_path / "m.onnx", x, config=EXACT)["out"]
    np.testing.assert_allclose(out, x @ (codes.reshape(w.shape) * scale), rtol=1e-6, atol=1e-6)


def test_ort_fuses_int4_matmul_into_matmulnbits(tmp_path):
    """A fact of ONNX Runtime 1.32 the README states: DequantizeLinear(INT4) + MatMul becomes
    MatMulNBits (int4 kernels) at the default optimization level, computing with int8
    activations at its default accuracy level 4 (not exact); accuracy level 0 is exact.
    qbnn's dense layers are Gemm and its convolutions Conv, which are not fused."""
    import onnxruntime as ort

    rng = np.random.default_rng(1)
    codes = rng.integers(-8, 8, size=(64, 32))
    m = _matmul_model(np.zeros((64, 32), np.float32))
    replace_with_dq(m, "w", codes, np.full(32, 0.25, np.float32), axis=1)
    onnx.save(m, tmp_path / "m.onnx")
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(tmp_path / "m.onnx"), opts, providers=["CPUExecutionProvider"])
    assert [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node] == ["MatMulNBits"]
    x = rng.random((3, 64)).astype(np.float32)
    ref = x @ (codes * 0.25)
    assert np.abs(run(tmp_path / "m.onnx", x)["out"] - ref).max() > 1e-3  # level 4: int8 inputs
    np.testing.assert_allclose(run(tmp_path / "m.onnx", x, config=EXACT)["out"], ref, atol=1e-5)


@pytest.mark.parametrize(
    ("lo", "hi", "kind", "zp"),
    [(-2, 2, TensorProto.INT4, 0), (0, 15, TensorProto.UINT4, 0), (-15, 0, TensorProto.UINT4, 15),
     (-8, 8, TensorProto.INT8, 0), (0, 200, TensorProto.UINT8, 0), (-300, 5, TensorProto.INT16, 0)],
)  # fmt: skip
def test_container_is_the_smallest_that_holds_the_codes(lo, hi, kind, zp):
    tp, z, _, _ = container(np.array([lo, hi]))
    assert (tp, z) == (kind, zp)


def test_weight_grid_rules():
    w = np.array([[0.9, -0.3, 0.05], [0.2, 0.1, -0.4]], np.float32)
    codes, s = weight_grid(w, 4, out_axis=0)
    np.testing.assert_allclose(s, [0.9 / 7, 0.4 / 7], rtol=1e-6)
    assert np.abs(codes).max() == 7
    codes, s = weight_grid(w, 2, rng=(-0.6, 0.6))  # learned range: s = 1.2 / 3
    np.testing.assert_allclose(s, 0.4)
    np.testing.assert_array_equal(codes, [[2, -1, 0], [0, 0, -1]])  # 0.9 clipped to 0.6 -> 1.5 -> 2
    codes, s = weight_grid(w, 0)
    assert not codes.any()


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
def test_activation_qdq_matches_numpy_fake_quant(bits, tmp_path):
    w = np.eye(6, dtype=np.float32)
    m = _matmul_model(w)
    insert_activation_qdq(m, "mm", bits, -0.5, 2.0)
    onnx.save(m, tmp_path / "m.onnx")
    x = np.linspace(-1.5, 3.0, 36, dtype=np.float32).reshape(6, 6)
    s, zp, clo, chi = activation_grid(-0.5, 2.0, bits)
    q = np.clip(np.round(np.clip(x, clo, chi) / np.float32(s)) + zp, 0, 2**bits - 1)
    np.testing.assert_allclose(run(tmp_path / "m.onnx", x)["out"], (q - zp) * np.float32(s),
                               atol=1e-6)  # fmt: skip
    assert len(np.unique(run(tmp_path / "m.onnx", x)["out"])) <= 2**bits
