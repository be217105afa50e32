"""The sample loop as batched ops (``qbnn.exporters.passes.scan_batch``).

Exact structure on hand-built Gemm-body Scans (transB 0/1, with and without bias) and ORT
outputs equal before and after for S in {1, 3, 8}, B in {1, 5} (1e-6); declines (Conv body, a
changing state, reverse direction, a non-zero axis, alpha != 1) leave the model unchanged and
log the reason; on exported ``weight``-mode models (Bayesian-Torch head, 2-layer Bayesian MLP
head, both on a conv body): no Scan left, seeded outputs equal to the export without the pass
(1e-6), MC mean vs torch MC within 5 standard errors, OpenVINO runs it, int8 keeps the posterior.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from bayesian_torch.layers import LinearReparameterization
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import qbnn.exporters.passes.order as pass_order
from qbnn.exporters import export
from qbnn.exporters.passes import SPLIT_PASSES
from qbnn.exporters.passes.scan_batch import ScanBatch
from qbnn.exporters.passes.scan_licm import ScanLICM
from qbnn.pipeline.quantize import QuantConfig, quantize_model
from qbnn.runtimes import Predictor, available_providers

from tiny_models import RHO, example

BATCH = ScanBatch()
LOGGER = "qbnn.exporters.passes.scan_batch"
F_IN, OUT = 6, 3


def _run(model: onnx.ModelProto, feed: dict, names=None) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(names, feed)


def _info(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


# --- hand-built loops: state x [B, F] passed through, W_s (and C_s) scanned


def _loop(trans_b: int = 1, bias: bool = True, body_op: str = "Gemm", use_final: bool = False):
    """Body ``Gemm(x, W_s[, C_s]) -> Relu -> Reshape([-1, OUT])``; ``w [S, OUT, F]`` when
    ``trans_b`` else ``[S, F, OUT]``. ``body_op="Conv"``: ``x [B, F, 4]`` and a per-sample
    ``Conv`` instead of the Gemm. ``use_final``: the state's final value is a graph output."""
    conv = body_op == "Conv"
    x_shape = ["B", F_IN, 4] if conv else ["B", F_IN]
    w_shape = [OUT, F_IN, 1] if conv else ([OUT, F_IN] if trans_b else [F_IN, OUT])
    ins = ["x_in", "w_s", *(["c_s"] if bias else [])]
    op = helper.make_node(body_op, ins, ["g"], name="head", **({} if conv else {"transB": trans_b}))
    nodes = [
        helper.make_node("Identity", ["x_in"], ["x_out"], name="pass"),
        op,
        helper.make_node("Relu", ["g"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "shape"], ["y"], name="flat", allowzero=1),
    ]
    body = helper.make_graph(
        nodes,
        "body",
        [_info("x_in", x_shape), _info("w_s", w_shape), *([_info("c_s", [OUT])] if bias else [])],
        [_info("x_out", x_shape), _info("y", ["B", OUT * (4 if conv else 1)])],
        [numpy_helper.from_array(np.array([-1, OUT * (4 if conv else 1)], np.int64), "shape")],
    )
    scan_in = ["input", "w", *(["c"] if bias else [])]
    scan = helper.make_node(
        "Scan", scan_in, ["x_final", "ys"], body=body, num_scan_inputs=len(scan_in) - 1, name="loop"
    )
    outputs = [_info("ys", ["S", "B", OUT * (4 if conv else 1)])]
    outputs += [_info("x_final", x_shape)] if use_final else []
    graph_in = [_info("input", x_shape), _info("w", ["S", *w_shape])]
    graph_in += [_info("c", ["S", OUT])] if bias else []
    g = helper.make_graph([scan], "g", graph_in, outputs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _feed(model: onnx.ModelProto, s: int, b: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(10 * s + b)
    feed = {}
    for i in model.graph.input:
        dims = [
            {"S": s, "B": b}.get(d.dim_param, d.dim_value) for d in i.type.tensor_type.shape.dim
        ]
        feed[i.name] = rng.standard_normal(dims).astype(np.float32)
    return feed


def _triples(graph: onnx.GraphProto) -> list[tuple[str, list[str], list[str]]]:
    return [(n.op_type, list(n.input), list(n.output)) for n in graph.node]


def _init(graph: onnx.GraphProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in graph.initializer if t.name == name))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("trans_b", [1, 0])
def test_gemm_loop_becomes_batched_matmul(trans_b, bias):
    model = _loop(trans_b, bias)
    before = copy.deepcopy(model)
    res = BATCH(model)
    assert res.modified and res.model is model
    assert res.notes == ("scan_batch: sample loop 'loop' (4 ops) runs as batched MatMul over S",)
    w = "w"
    expected = []
    if trans_b:  # [S, O, F] -> [S, F, O]
        w = "head/B/transpose/batched"
        expected.append(("Transpose", ["w"], [w]))
    y = "head/bias/batched" if bias else "head/batched"
    expected.append(("MatMul", ["input", w], ["head/batched"]))
    if bias:  # C_s [S, O] -> [S, 1, O]
        expected += [
            ("Unsqueeze", ["c", "loop/batched/axes"], ["head/C/unsqueeze/batched"]),
            ("Add", ["head/batched", "head/C/unsqueeze/batched"], [y]),
        ]
    expected += [
        ("Relu", [y], ["r/batched"]),
        ("Reshape", ["r/batched", "flat/shape"], ["ys"]),
    ]
    g = model.graph
    assert _triples(g) == expected
    if trans_b:
        assert list(g.node[0].attribute[0].ints) == [0, 2, 1]
    if bias:
        assert _init(g, "loop/batched/axes").tolist() == [1]
    assert _init(g, "flat/shape").tolist() == [0, -1, OUT]
    assert sorted(t.name for t in g.initializer) == sorted(
        ["flat/shape", *(["loop/batched/axes"] if bias else [])]
    )
    onnx.checker.check_model(model, full_check=True)
    for s in (1, 3, 8):
        for b in (1, 5):
            feed = _feed(before, s, b)
            ref = _run(before, feed, ["ys"])[0]
            out = _run(model, feed, ["ys"])[0]
            assert out.shape == ref.shape == (s, b, OUT)
            np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_a_used_final_state_is_the_initial_value():
    model = _loop(use_final=True)
    before = copy.deepcopy(model)
    assert BATCH(model).modified
    assert _triples(model.graph)[-1] == ("Identity", ["input"], ["x_final"])
    feed = _feed(before, 3, 5)
    for a, b in zip(_run(before, feed), _run(model, feed), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def test_matmul_add_body_lifts_the_lower_rank_operand():
    """``MatMul(x, W_s) + C_s`` with ``C_s [O]`` per sample: batched ``C [S, O]`` would align S
    with the batch axis under numpy broadcasting, so it is unsqueezed to ``[S, 1, O]``."""
    model = _loop(trans_b=0)
    body = model.graph.node[0].attribute[0].g
    head = body.node[1]
    head.op_type, head.input[:] = "MatMul", ["x_in", "w_s"]
    del head.attribute[:]
    body.node.insert(2, helper.make_node("Add", ["g", "c_s"], ["gc"], name="bias"))
    body.node[3].input[0] = "gc"
    before = copy.deepcopy(model)
    assert BATCH(model).modified
    assert [n.op_type for n in model.graph.node] == [
        "MatMul", "Unsqueeze", "Add", "Relu", "Reshape",
    ]  # fmt: skip
    for s, b in ((1, 1), (3, 5), (8, 5)):
        feed = _feed(before, s, b)
        ref, out = _run(before, feed, ["ys"])[0], _run(model, feed, ["ys"])[0]
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def _reverse(m: onnx.ModelProto) -> None:
    m.graph.node[0].attribute.append(helper.make_attribute("scan_input_directions", [0, 1]))


def _axis(m: onnx.ModelProto) -> None:
    m.graph.node[0].attribute.append(helper.make_attribute("scan_output_axes", [1]))


def _changing(m: onnx.ModelProto) -> None:
    body = m.graph.node[0].attribute[0].g
    body.node[0].op_type = "Relu"  # x_out = relu(x_in): the state changes


def _alpha(m: onnx.ModelProto) -> None:
    m.graph.node[0].attribute[0].g.node[1].attribute.append(helper.make_attribute("alpha", 2.0))


def _random(m: onnx.ModelProto) -> None:
    body = m.graph.node[0].attribute[0].g
    body.node.insert(1, helper.make_node("RandomNormalLike", ["x_in"], ["eps"], name="noise"))
    body.node[2].input[0] = "eps"  # the Gemm reads fresh noise each iteration


DECLINES = {
    "conv": (lambda: _loop(body_op="Conv"), "Conv 'head' in the body"),
    "changing_state": (lambda: _loop(), "loop state 0 ('x_in') changes between iterations"),
    "reverse": (lambda: _loop(), "a reverse direction in scan_input_directions"),
    "output_axis": (lambda: _loop(), "a non-zero axis in scan_output_axes"),
    "alpha": (lambda: _loop(), "Gemm 'head' with alpha or beta != 1"),
    "random": (lambda: _loop(), "random op 'noise' in the body"),
}
EDITS = {
    "changing_state": _changing, "reverse": _reverse, "output_axis": _axis, "alpha": _alpha,
    "random": _random,
}  # fmt: skip


@pytest.mark.parametrize("case", list(DECLINES))
def test_what_cannot_be_proven_equal_is_declined(case, caplog):
    factory, reason = DECLINES[case]
    model = factory()
    EDITS.get(case, lambda m: None)(model)
    before = model.SerializeToString()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        res = BATCH(model)
    assert not res.modified and res.notes == ()
    assert model.SerializeToString() == before
    assert f"sample loop 'loop' kept: {reason}" in caplog.text


def test_scan_batch_runs_right_after_licm():
    kinds = [type(p) for p in SPLIT_PASSES]
    assert kinds.index(ScanBatch) == kinds.index(ScanLICM) + 1


# --- exported weight-mode models


class ConvBodyBayesHead(nn.Module):
    """Deterministic Conv-BN-ReLU, mean pool; a Bayesian-Torch head of one
    ``LinearReparameterization`` or (``mlp``) two with a ReLU between.
    ``[B, 1, 8, 8] -> [B, 4]``."""

    def __init__(self, mlp: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        hidden = 16 if mlp else 4
        self.fc = LinearReparameterization(8, hidden, posterior_rho_init=RHO)
        self.fc2 = LinearReparameterization(16, 4, posterior_rho_init=RHO) if mlp else None

    def forward(self, x):
        h = self.fc(self.body(x).mean((2, 3)))[0]
        return h if self.fc2 is None else self.fc2(torch.relu(h))[0]


def _seeded(mlp: bool) -> nn.Module:
    torch.manual_seed(0)
    net = ConvBodyBayesHead(mlp).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        net.body[1].running_mean.uniform_(-0.5, 0.5)
        net.body[1].running_var.uniform_(0.5, 2.0)
    return net


CASES = {"bt_head": False, "bayes_mlp_head": True}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``case -> (model, x, before, after, path)``: the seeded export with every split pass but
    this one, and the default export (fidelity self-check on), same seed: same noise draws."""
    cache = {}
    tmp = tmp_path_factory.mktemp("batch")

    def get(case):
        if case not in cache:
            model, x = _seeded(CASES[case]), example((1, 8, 8), batch=4, seed=5)
            kw = {"sampling": "weight", "seed": 3}
            others = tuple(p for p in SPLIT_PASSES if not isinstance(p, ScanBatch))
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(pass_order, "SPLIT_PASSES", others)  # read per export
                p0 = export(model, x, tmp / f"{case}_0.onnx", **kw, verify=False)
            p1 = export(model, x, tmp / f"{case}_1.onnx", **kw)
            cache[case] = (model, x, onnx.load(str(p0)), onnx.load(str(p1)), p1)
        return cache[case]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_exported_loop_is_batched_with_the_same_seeded_outputs(exported, case):
    """The LICM'd body (Gemm[, Relu, Gemm], Reshape, Identities) becomes one MatMul per
    Bayesian layer; ScanBatch on the other export gives the default export's nodes; with the
    same seeds both graphs draw the same noise: every output agrees to 1e-6, S = 1 and 16."""
    _, x, before, after, _ = exported(case)
    layers = 1 + CASES[case]
    (scan,) = [n for n in before.graph.node if n.op_type == "Scan"]
    body_ops = [n.op_type for n in scan.attribute[0].g.node if n.op_type != "Identity"]
    assert body_ops == ["Gemm", *(["Relu", "Gemm"] if CASES[case] else []), "Reshape"]
    ops = [n.op_type for n in after.graph.node]
    assert "Scan" not in ops and "Gemm" not in ops
    assert ops.count("MatMul") == layers and ops.count("Conv") == 1
    res = BATCH(copy.deepcopy(before))
    assert res.notes == (
        f"scan_batch: sample loop '{scan.name}' ({len(scan.attribute[0].g.node)} ops) runs as "
        "batched MatMul over S",
    )
    assert [n.op_type for n in res.model.graph.node] == ops
    for s in (1, 16):
        feed = {"input": x.numpy(), "num_samples": np.array(s)}
        for a, b in zip(_run(before, feed), _run(after, feed), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def _torch_probs(model: nn.Module, x: torch.Tensor, s: int) -> np.ndarray:
    torch.manual_seed(11)
    with torch.no_grad():
        return torch.stack([F.softmax(model(x), -1) for _ in range(s)]).double().numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_mean_probs_match_torch_mc(exported, case):
    """Graph S = 2000 (seeded) vs 2000 Bayesian-Torch passes (seed 11): every mean_probs element
    within 5 standard errors of the difference (+1e-4)."""
    model, x, _, after, _ = exported(case)
    s = 2000
    graph = _run(after, {"input": x.numpy(), "num_samples": np.array(s)}, ["probs"])[0]
    graph = graph.astype(np.float64)
    ref = _torch_probs(model, x, s)
    assert graph.var(0).max() > 1e-4  # the posterior spreads the probabilities
    se = np.sqrt((graph.var(0, ddof=1) + ref.var(0, ddof=1)) / s)
    diff = np.abs(graph.mean(0) - ref.mean(0))
    assert np.all(diff <= 5 * se + 1e-4), float((diff / np.maximum(se, 1e-12)).max())


@pytest.mark.skipif("openvino" not in available_providers(), reason="openvino not installed")
@pytest.mark.parametrize("case", list(CASES))
def test_openvino_runs_the_batched_head(exported, case):
    """OpenVINO compiles the batched graph: its MC mean (S = 512) matches ONNX Runtime's within
    5 standard errors (+1e-3) per element."""
    _, x, _, _, path = exported(case)
    xs = x.numpy()
    a = Predictor(path, provider="cpu", seed=1).predict(xs, 512, return_samples=True)
    b = Predictor(path, provider="openvino", seed=2).predict(xs, 512, return_samples=True)
    assert b.probs.shape == a.probs.shape == (512, 4, 4)
    se = np.sqrt(a.probs.var(0) / 512 + b.probs.var(0) / 512)
    assert np.all(np.abs(a.mean_probs - b.mean_probs) <= 5 * se + 1e-3)


@pytest.mark.parametrize("case", list(CASES))
def test_int8_of_the_batched_graph_keeps_the_posterior(exported, case, tmp_path):
    """QOperator int8 (the stage's own spread guard must pass, not raise): the conv body gets a
    static QLinearConv; the per-sample MatMuls (sampled weights) stay fp32; the int8 graph's
    logit spread over samples is within the guard's [0.5, 2] of fp32's."""
    _, _, _, _, path = exported(case)
    calib = example((1, 8, 8), batch=64, seed=9).numpy()
    res = quantize_model(path, tmp_path / "q.onnx", QuantConfig(format="qoperator"), calib=calib)
    q = onnx.load(str(res.path))
    ops = [n.op_type for n in q.graph.node]
    assert "QLinearConv" in ops and "Scan" not in ops
    assert ops.count("MatMul") == 1 + CASES[case]
    assert res.spread is not None and 0.5 <= res.spread.ratio <= 2.0, res.spread
