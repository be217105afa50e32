"""Loop-invariant code motion out of the sample loop (``qbnn.exporters.passes.scan_licm``).

Exact structure on a hand-built five-node Scan; on exported ``weight``-mode models: what moved,
seeded outputs identical before and after the pass (same noise draws, ONNX Runtime, 1e-5), and
the graph's MC mean against torch MC within 5 standard errors (fixed seeds).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from bayesian_torch.layers import Conv2dReparameterization, LinearReparameterization
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from qbnn.exporters import export
from qbnn.exporters.passes import SPLIT_PASSES, run_passes
from qbnn.exporters.passes.finalize import outer_refs as _outer_refs
from qbnn.exporters.passes.scan_licm import ScanLICM
from qbnn.pipeline.quantize import QuantConfig, quantize_model
from qbnn.runtimes import Predictor, available_providers
from qbnn.runtimes.nchwc import NCHWC_DOMAIN, block_size, nchwc_loop_convs

from tiny_models import RHO, bayes_cnn, example

LICM = ScanLICM()


def _scan(model: onnx.ModelProto) -> onnx.NodeProto:
    (scan,) = [n for n in model.graph.node if n.op_type == "Scan"]
    return scan


def _body(model: onnx.ModelProto) -> onnx.GraphProto:
    return next(a.g for a in _scan(model).attribute if a.name == "body")


def _run(model: onnx.ModelProto, feed: dict, names=None) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(names, feed)


# --- a hand-built Scan: invariant Conv -> Relu -> Flatten on the carried batch, per-sample MatMul


def _loop(accumulate: bool = False, random: bool = False, use_final: bool = False):
    """``input [B, 2, 4, 4]``, ``w [S, 32, 3]``; body: ``Conv(x, conv_w) -> Relu -> Flatten ->
    MatMul(., w_s)``. ``accumulate``: the state is ``x + 1`` each iteration (not a pass-through);
    ``random``: Gaussian noise is added to ``x`` before the Conv; ``use_final``: the state's final
    value is a graph output."""
    rng = np.random.default_rng(0)
    conv_w = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Identity", ["x_in"], ["x_out"], name="pass"),
        helper.make_node("Conv", ["x_in", "conv_w/in_loop"], ["c"], pads=[1] * 4, name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "w_s"], ["y"], name="matmul"),
    ]
    inits = [numpy_helper.from_array(conv_w, "conv_w/in_loop")]
    if accumulate:
        nodes[0] = helper.make_node("Add", ["x_in", "one"], ["x_out"], name="acc")
        inits.append(numpy_helper.from_array(np.ones((1,), np.float32), "one"))
    if random:
        nodes[1:1] = [
            helper.make_node("RandomNormalLike", ["x_in"], ["eps"], name="noise", seed=1.0),
            helper.make_node("Add", ["x_in", "eps"], ["xn"], name="noisy"),
        ]
        nodes[3].input[0] = "xn"
    body = helper.make_graph(
        nodes,
        "body",
        [
            helper.make_tensor_value_info("x_in", TensorProto.FLOAT, ["B", 2, 4, 4]),
            helper.make_tensor_value_info("w_s", TensorProto.FLOAT, [32, 3]),
        ],
        [
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, ["B", 2, 4, 4]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3]),
        ],
        inits,
        value_info=[helper.make_tensor_value_info("f", TensorProto.FLOAT, ["B", 32])],
    )
    scan = helper.make_node(
        "Scan", ["input", "w"], ["x_final", "ys"], body=body, num_scan_inputs=1, name="loop"
    )
    outputs = [helper.make_tensor_value_info("ys", TensorProto.FLOAT, ["S", "B", 3])]
    if use_final:
        outputs.append(helper.make_tensor_value_info("x_final", TensorProto.FLOAT, ["B", 2, 4, 4]))
    g = helper.make_graph(
        [scan],
        "g",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", 2, 4, 4]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, ["S", 32, 3]),
        ],
        outputs,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _feed() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "input": rng.standard_normal((5, 2, 4, 4)).astype(np.float32),
        "w": rng.standard_normal((4, 32, 3)).astype(np.float32),
    }


def test_invariant_prefix_moves_before_the_scan_and_comes_back_as_a_loop_state():
    model = _loop()
    ref = _run(model, _feed(), ["ys"])[0]
    res = LICM(model)
    assert res.modified and res.model is model
    assert res.notes == (
        "scan_licm: 3 of the 5 nodes of the sample loop 'loop' run once outside it (2 per sample)",
    )
    g, body = model.graph, _body(model)
    outer = [(n.op_type, n.name, list(n.input), list(n.output)) for n in g.node]
    assert outer == [
        ("Conv", "conv", ["input", "conv_w"], ["c"]),
        ("Relu", "relu", ["c"], ["r"]),
        ("Flatten", "flat", ["r"], ["f"]),
        ("Scan", "loop", ["f", "w"], ["f/carried_final", "ys"]),
    ]
    inner = [(n.op_type, list(n.input), list(n.output)) for n in body.node]
    assert inner == [
        ("MatMul", ["f/carried", "w_s"], ["y"]),
        ("Identity", ["f/carried"], ["f/carried/out"]),
    ]
    assert [i.name for i in body.input] == ["f/carried", "w_s"]
    assert [o.name for o in body.output] == ["f/carried/out", "y"]
    # the body's constant moved out under its pre-finalize name; the body keeps none
    assert [t.name for t in g.initializer] == ["conv_w"] and not body.initializer
    # the new state keeps the frontier's type (OpenVINO needs the rank); nothing outer is read
    shape = [d.dim_param or d.dim_value for d in body.input[0].type.tensor_type.shape.dim]
    assert shape == ["B", 32]
    assert _outer_refs(body) == []
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_allclose(_run(model, _feed(), ["ys"])[0], ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "moved"),
    [("accumulate", []), ("random", []), ("use_final", ["conv", "relu", "flat"])],
)
def test_what_varies_between_iterations_stays_in_the_loop(kind, moved):
    """A state the body changes and a random op block the motion (and everything after them);
    a pass-through state whose final value is used outside stays a state."""
    model = _loop(**{kind: True})
    before = copy.deepcopy(model)
    res = LICM(model)
    assert res.modified == bool(moved)
    assert [n.name for n in model.graph.node] == [*moved, "loop"]
    if not moved:
        assert model == before
    else:  # x_in still passes through (x_final is a graph output), the frontier is added after
        assert [i.name for i in _body(model).input] == ["x_in", "f/carried", "w_s"]
        assert list(_scan(model).output) == ["x_final", "f/carried_final", "ys"]
        feed = _feed()
        for a, b in zip(_run(before, feed), _run(model, feed), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def test_constant_helpers_are_copied_out_and_untyped_frontiers_get_inferred_types():
    """A ``Constant`` shape read by a moved Reshape and by a per-sample one is copied out (fresh
    names) and stays in the body; with no value_info for the frontier, ONNX shape inference
    types the new state."""
    model = _loop()
    body = _body(model)
    del body.value_info[:]
    shape = helper.make_tensor("v", TensorProto.INT64, [2], [0, -1])
    nodes = list(body.node)  # pass, conv, relu, flat, matmul
    del body.node[:]
    body.node.extend(
        [
            nodes[0],
            helper.make_node("Constant", [], ["shape"], value=shape, name="shape"),
            *nodes[1:3],
            helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"),
            helper.make_node("MatMul", ["f", "w_s"], ["y0"], name="matmul"),
            helper.make_node("Reshape", ["y0", "shape"], ["y"], name="out"),
        ]
    )
    ref = _run(model, _feed(), ["ys"])[0]
    assert LICM(model).modified
    assert [(n.op_type, n.name) for n in model.graph.node] == [
        ("Constant", "shape/licm"),
        ("Conv", "conv"),
        ("Relu", "relu"),
        ("Reshape", "flat"),
        ("Scan", "loop"),
    ]
    assert list(model.graph.node[3].input) == ["r", "shape/licm"]
    assert [n.op_type for n in _body(model).node] == ["Constant", "MatMul", "Reshape", "Identity"]
    info = _body(model).input[0]
    assert info.name == "f/carried" and info.type.tensor_type.shape.dim[0].dim_param == "B"
    assert [d.dim_value for d in info.type.tensor_type.shape.dim][1:] == [32]
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_allclose(_run(model, _feed(), ["ys"])[0], ref, rtol=1e-6, atol=1e-6)


def test_graph_without_scan_is_left_alone():
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(g)
    before = model.SerializeToString()
    res = LICM(model)
    assert not res.modified and res.notes == () and model.SerializeToString() == before


def test_scan_licm_is_an_export_pass():
    assert any(isinstance(p, ScanLICM) for p in SPLIT_PASSES)


# --- exported weight-mode models


class HeadOnConvBody(nn.Module):
    """Deterministic Conv-BN-ReLU x2 and mean pool, Bayesian-Torch ``LinearReparameterization``
    head. ``[B, 1, 8, 8] -> [B, 4]``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.fc = LinearReparameterization(8, 4, posterior_rho_init=RHO)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))[0]


class VGGLastBlockBayes(nn.Module):
    """VGG-style: two deterministic conv blocks, a last block of two Bayesian-Torch
    ``Conv2dReparameterization`` (16 channels: NCHWc-eligible), global pool, Linear.
    ``[B, 3, 16, 16] -> [B, 4]``."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.b1 = Conv2dReparameterization(16, 16, 3, padding=1, posterior_rho_init=RHO)
        self.b2 = Conv2dReparameterization(16, 16, 3, padding=1, posterior_rho_init=RHO)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        h = self.block2(self.block1(x))
        h = torch.relu(self.b1(h)[0])
        h = torch.relu(self.b2(h)[0])
        return self.fc(h.mean((2, 3)))


def _seeded(cls):
    torch.manual_seed(0)
    net = cls().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net


MODELS = {
    "bt_head": (lambda: _seeded(HeadOnConvBody), (1, 8, 8)),
    "vgg_last_block": (lambda: _seeded(VGGLastBlockBayes), (3, 16, 16)),
    "fully_bayesian": (lambda: bayes_cnn().eval(), (1, 8, 8)),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``case -> (model, x, before, after)``: the seeded export without the pass and the
    default export (pass on, fidelity self-check on), same seed, hence same noise draws."""
    cache = {}
    tmp = tmp_path_factory.mktemp("licm")

    def get(case):
        if case not in cache:
            factory, shape = MODELS[case]
            model, x = factory(), example(shape, batch=4, seed=5)
            kw = {"sampling": "weight", "seed": 3}
            p0 = export(model, x, tmp / f"{case}_0.onnx", **kw, verify=False, split=False)
            p1 = export(model, x, tmp / f"{case}_1.onnx", **kw)
            cache[case] = (model, x, onnx.load(str(p0)), onnx.load(str(p1)))
        return cache[case]

    return get


def _ops(graph: onnx.GraphProto) -> list[str]:
    return [n.op_type for n in graph.node]


def test_bt_head_body_keeps_only_the_heads_ops(exported):
    _, _, before, after = exported("bt_head")
    assert _ops(_body(before)).count("Conv") == 2
    body = _body(after)
    # the head's Gemm and its output reshape; Identities pass the two states through
    assert sorted(o for o in _ops(body) if o != "Identity") == ["Gemm", "Reshape"]
    assert _ops(body).count("Identity") == 2
    assert _ops(after.graph).count("Conv") == 2  # torch.onnx folded the BatchNorms into them
    assert "input" not in _scan(after).input  # the batch no longer enters the loop
    assert _outer_refs(body) == []


def test_vgg_deterministic_convs_move_out_bayesian_block_stays(exported):
    _, _, before, after = exported("vgg_last_block")
    assert _ops(_body(before)).count("Conv") == 5
    body, states = _body(after), len(_scan(after).input) - 2 * 2  # 4 scanned: 2 (W, b) x 2
    assert _ops(body).count("Conv") == 2
    scanned = {i.name for i in body.input[states:]}
    assert all(n.input[1] in scanned for n in body.node if n.op_type == "Conv")
    assert _ops(after.graph).count("Conv") == 3 and "MaxPool" not in _ops(body)
    assert "Gemm" in _ops(body)  # the deterministic classifier reads the Bayesian block


def test_fully_bayesian_model_is_left_unchanged(exported):
    _, _, before, _ = exported("fully_bayesian")
    res = LICM(copy.deepcopy(before))
    assert not res.modified
    assert res.model == before


@pytest.mark.parametrize("case", list(MODELS))
def test_pass_on_a_copy_reproduces_the_export_and_its_seeded_outputs(exported, case):
    """The passes (this one first) run on the pre-pass export give the default export's graph;
    with the same seeds both graphs draw the same noise, so every output agrees to 1e-5."""
    _, x, before, after = exported(case)
    assert isinstance(SPLIT_PASSES[0], ScanLICM)
    moved = run_passes(copy.deepcopy(before), SPLIT_PASSES).model
    assert moved == after
    feed = {"input": x.numpy(), "num_samples": np.array(16)}
    for a, b in zip(_run(before, feed), _run(after, feed), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def _torch_probs(model: nn.Module, x: torch.Tensor, s: int) -> np.ndarray:
    torch.manual_seed(11)
    with torch.no_grad():
        outs = [model(x) for _ in range(s)]
    outs = [o[0] if isinstance(o, tuple) else o for o in outs]
    return torch.stack([F.softmax(o, -1) for o in outs]).double().numpy()


@pytest.mark.parametrize("case", list(MODELS))
def test_mean_probs_match_torch_mc(exported, case):
    """Graph S = 2000 (seeded) vs 2000 Bayesian-Torch passes (seed 11): every mean_probs element
    within 5 standard errors of the difference (+1e-4)."""
    model, x, _, after = exported(case)
    s = 2000
    feed = {"input": x.numpy(), "num_samples": np.array(s)}
    graph = _run(after, feed, ["probs"])[0].astype(np.float64)
    ref = _torch_probs(model, x, s)
    se = np.sqrt((graph.var(0, ddof=1) + ref.var(0, ddof=1)) / s)
    diff = np.abs(graph.mean(0) - ref.mean(0))
    assert np.all(diff <= 5 * se + 1e-4), float((diff / np.maximum(se, 1e-12)).max())


@pytest.mark.skipif(block_size() == 0, reason="ONNX Runtime has no NCHWc kernels here")
def test_nchwc_rewrites_the_bayesian_convs_left_in_the_loop(exported):
    """runtimes/nchwc on the moved graph: the two run-time-weight convs of the Bayesian block
    (reading the carried frontier) are rewritten; outputs equal up to summation order."""
    _, x, _, after = exported("vgg_last_block")
    feed = {"input": x.numpy(), "num_samples": np.array(8)}
    ref = _run(after, feed, ["probs"])[0]
    rewritten = copy.deepcopy(after)
    assert nchwc_loop_convs(rewritten) == 2
    ops = [(n.domain, n.op_type) for n in _body(rewritten).node]
    assert ops.count((NCHWC_DOMAIN, "Conv")) == 2 and ("", "Conv") not in ops
    np.testing.assert_allclose(_run(rewritten, feed, ["probs"])[0], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif("openvino" not in available_providers(), reason="openvino not installed")
def test_openvino_runs_the_moved_loop(exported, tmp_path):
    """OpenVINO compiles a body whose input is a carried frontier: its MC mean (S = 512) matches
    ONNX Runtime's within 5 standard errors (+1e-3) per element."""
    _, x, _, after = exported("vgg_last_block")
    path = tmp_path / "m.onnx"
    onnx.save(after, str(path))
    xs = x.numpy()
    a = Predictor(path, provider="cpu", seed=1).predict(xs, 512, return_samples=True)
    b = Predictor(path, provider="openvino", seed=2).predict(xs, 512, return_samples=True)
    se = np.sqrt(a.probs.var(0) / 512 + b.probs.var(0) / 512)
    assert np.all(np.abs(a.mean_probs - b.mean_probs) <= 5 * se + 1e-3)


def test_int8_moved_convs_get_static_int8_loop_convs_the_loop_path(exported, tmp_path):
    """QOperator int8 of the moved VGG graph: the three deterministic convolutions, now outside
    the loop, become static QLinearConv on int8 initializer weights; the two Bayesian ones in the
    loop take the run-time-weight int8 path (QLinearConv in the body, no fp32 Conv left)."""
    _, x, _, after = exported("vgg_last_block")
    src = tmp_path / "m.onnx"
    onnx.save(after, str(src))
    calib = example(MODELS["vgg_last_block"][1], batch=64, seed=9).numpy()
    res = quantize_model(src, tmp_path / "q.onnx", QuantConfig(format="qoperator"), calib=calib)
    q = onnx.load(str(res.path))
    int8 = {t.name for t in q.graph.initializer if t.data_type == TensorProto.INT8}
    outer = [n for n in q.graph.node if n.op_type == "QLinearConv"]
    assert len(outer) == 3 and all(n.input[3] in int8 for n in outer)
    assert "Conv" not in _ops(q.graph)
    assert _ops(_body(q)).count("QLinearConv") == 2 and "Conv" not in _ops(_body(q))
