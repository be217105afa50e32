"""The dedup pass (issue 21, item 2): a backbone shared by the members of an unrolled exact
posterior is computed once, and nothing else changes.

Hand-built graphs assert the exact node list the pass leaves. Exported graphs (``frozen:8`` of a
Bayesian-Torch head, ensembles sharing a backbone, independent ensembles, a Gaussian over a
subset of the weights) are exported with the pass switched off, deduplicated, and compared
with ONNX Runtime: these graphs are deterministic, so outputs agree to 1e-6 for every
``num_samples``. Layer sizes exceed 1024 elements on purpose: below that the torch exporter's
optimizer merges equal initializers itself, and the test could not fail.
"""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from bayesian_torch.layers import LinearReparameterization
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from qbnn.exporters import export_model
from qbnn.exporters.families.ensemble import WeightSamples
from qbnn.exporters.families.gaussian import WeightGaussian
from qbnn.exporters.modules.vector import DiagTerm, VectorGaussian
from qbnn.exporters.passes import SPLIT_PASSES
from qbnn.exporters.passes.dedup import DedupPass

from tiny_models import example

OUTS = ["probs", "mean_probs", "predictive_entropy", "expected_entropy", "mutual_information"]


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value.astype(np.float32), name)


def _graph_model(nodes, inits, outputs, inputs=None) -> onnx.ModelProto:
    inputs = inputs or [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 4, 4])]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape) for o, shape in outputs]
    graph = helper.make_graph(nodes, "g", inputs, outs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _structure(model: onnx.ModelProto) -> list[tuple[str, list[str], list[str]]]:
    return [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node]


def _ort(model: onnx.ModelProto, feed: dict, names=None) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(names, feed)


def _two_branch_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 1, 3, 3))
    inits = [
        _init("w_a", w), _init("w_b", w.copy()), _init("bias", np.zeros(2)),
        _init("h_a", rng.standard_normal((32, 3))), _init("h_b", rng.standard_normal((32, 3))),
    ]  # fmt: skip
    mk = helper.make_node
    nodes = [
        mk("Conv", ["X", "w_a", "bias"], ["c_a"], pads=[1, 1, 1, 1]),
        mk("Conv", ["X", "w_b", "bias"], ["c_b"], pads=[1, 1, 1, 1]),
        mk("Relu", ["c_a"], ["r_a"]),
        mk("Relu", ["c_b"], ["r_b"]),
        mk("Flatten", ["r_a"], ["f_a"]),
        mk("Flatten", ["r_b"], ["f_b"]),
        mk("MatMul", ["f_a", "h_a"], ["y_a"]),
        mk("MatMul", ["f_b", "h_b"], ["y_b"]),
        mk("RandomUniformLike", ["X"], ["u_1"]),
        mk("RandomUniformLike", ["X"], ["u_2"]),
        mk("Sub", ["u_1", "u_2"], ["noise"]),
    ]
    return _graph_model(nodes, inits, [("y_a", [1, 3]), ("y_b", [1, 3]), ("noise", [1, 1, 4, 4])])


def test_shared_conv_branch_merged_heads_and_random_draws_kept():
    """Equal weights under two names: one Conv / Relu / Flatten feeds both heads; the two
    identical RandomUniformLike nodes (no seed: ORT seeds them apart) stay two draws, so
    their difference is not zero."""
    model = _two_branch_model()
    x = example((1, 4, 4), batch=1).numpy()
    before = _ort(model, {"X": x}, ["y_a", "y_b"])
    result = DedupPass()(model)
    assert result.modified
    assert _structure(result.model) == [
        ("Conv", ["X", "w_a", "bias"], ["c_a"]),
        ("Relu", ["c_a"], ["r_a"]),
        ("Flatten", ["r_a"], ["f_a"]),
        ("MatMul", ["f_a", "h_a"], ["y_a"]),
        ("MatMul", ["f_a", "h_b"], ["y_b"]),
        ("RandomUniformLike", ["X"], ["u_1"]),
        ("RandomUniformLike", ["X"], ["u_2"]),
        ("Sub", ["u_1", "u_2"], ["noise"]),
    ]
    assert [t.name for t in result.model.graph.initializer] == ["w_a", "bias", "h_a", "h_b"]
    assert result.notes == (
        "dedup: 1 duplicate initializers merged and 1 unused dropped (0.00 MiB); 3 duplicate "
        "nodes merged (1 Conv, 1 Relu, 1 Flatten): 11 -> 8 nodes",
    )
    onnx.checker.check_model(result.model, full_check=True)
    after = _ort(result.model, {"X": x}, ["y_a", "y_b", "noise"])
    for a, b in zip(before, after[:2], strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.abs(after[2]).max() > 0  # two distinct draws
    assert not DedupPass()(result.model).modified  # a fixed point


def test_overridable_inputs_outputs_commutation_and_multiple_outputs():
    """An initializer that is also a graph input (an overridable default like num_samples) is
    never merged with an equal constant; a duplicate producing a graph output is kept;
    ``Add(a, b)`` and ``Add(b, a)`` merge; a two-output Split merges output by output."""
    mk = helper.make_node
    inits = [_init("k", np.array([2.0])), _init("two", np.array([2.0])),
             _init("two_again", np.array([2.0]))]  # fmt: skip
    nodes = [
        mk("Add", ["X", "k"], ["a_1"]),
        mk("Add", ["X", "two"], ["a_2"]),
        mk("Add", ["two_again", "X"], ["a_3"]),
        mk("Split", ["a_2"], ["s_1", "s_2"], axis=2, num_outputs=2),
        mk("Split", ["a_3"], ["t_1", "t_2"], axis=2, num_outputs=2),
        mk("Mul", ["s_1", "t_2"], ["m_1"]),
        mk("Mul", ["t_1", "s_2"], ["m_2"]),
        mk("Neg", ["m_1"], ["out_1"]),
        mk("Neg", ["m_1"], ["out_2"]),
    ]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 4, 4]),
              helper.make_tensor_value_info("k", TensorProto.FLOAT, [1])]  # fmt: skip
    half = [1, 1, 2, 4]
    outputs = [("a_1", [1, 1, 4, 4]), ("m_2", half), ("out_1", half), ("out_2", half)]
    model = _graph_model(nodes, inits, outputs, inputs)
    x = example((1, 4, 4), batch=1).numpy()
    feed = {"X": x, "k": np.array([5.0], dtype=np.float32)}  # k overridden: a_1 != a_2
    before = _ort(model, feed)
    result = DedupPass()(model)
    assert _structure(result.model) == [
        ("Add", ["X", "k"], ["a_1"]),
        ("Add", ["X", "two"], ["a_2"]),
        ("Split", ["a_2"], ["s_1", "s_2"]),
        ("Mul", ["s_1", "s_2"], ["m_1"]),
        ("Mul", ["s_1", "s_2"], ["m_2"]),  # a duplicate, but a graph output
        ("Neg", ["m_1"], ["out_1"]),
        ("Neg", ["m_1"], ["out_2"]),  # idem
    ]
    assert [t.name for t in result.model.graph.initializer] == ["k", "two"]
    onnx.checker.check_model(result.model, full_check=True)
    for a, b in zip(before, _ort(result.model, feed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_drawing_functions_and_subgraph_holders_are_never_merged():
    """Two calls of a local function that draws stay two calls (a pure one merges); two
    identical ``If`` nodes (subgraph holders) stay two nodes."""
    mk = helper.make_node
    noisy = helper.make_function("local", "Noisy", ["a"], ["b"], [
        mk("RandomNormalLike", ["a"], ["n"]), mk("Add", ["a", "n"], ["b"])],
        [helper.make_opsetid("", 18)])  # fmt: skip
    pure = helper.make_function("local", "Pure", ["a"], ["b"], [mk("Relu", ["a"], ["b"])],
                                [helper.make_opsetid("", 18)])  # fmt: skip
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    branch = helper.make_graph([mk("Identity", ["X"], ["y"])], "b", [], [y])
    nodes = [
        mk("Noisy", ["X"], ["n_1"], domain="local"),
        mk("Noisy", ["X"], ["n_2"], domain="local"),
        mk("Pure", ["X"], ["p_1"], domain="local"),
        mk("Pure", ["X"], ["p_2"], domain="local"),
        mk("ReduceMax", ["X"], ["m"], keepdims=0),
        mk("Greater", ["m", "zero"], ["c"]),
        mk("If", ["c"], ["i_1"], then_branch=branch, else_branch=branch),
        mk("If", ["c"], ["i_2"], then_branch=branch, else_branch=branch),
        mk("Sum", ["n_1", "n_2", "p_1", "p_2", "i_1", "i_2"], ["out"]),
    ]
    model = _graph_model(nodes, [_init("zero", np.array(0.0))], [("out", [1, 1, 4, 4])])
    model.functions.extend([noisy, pure])
    model.opset_import.append(helper.make_opsetid("local", 1))
    result = DedupPass()(model)
    assert [n.output[0] for n in result.model.graph.node] == [
        "n_1",
        "n_2",
        "p_1",
        "m",
        "c",
        "i_1",
        "i_2",
        "out",
    ]
    assert list(result.model.graph.node[-1].input) == ["n_1", "n_2", "p_1", "p_1", "i_1", "i_2"]


def _run(model: onnx.ModelProto, x: torch.Tensor, s: int) -> list[np.ndarray]:
    feed = {"input": x.numpy(), "num_samples": np.array(s, dtype=np.int64)}
    return _ort(model, feed, OUTS)


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _body() -> nn.Sequential:
    """Conv 3->16, Conv 16->32 (stride 2), Conv 32->32, each + BatchNorm (non-trivial running
    statistics) + ReLU, then a global mean: ``[B, 3, 8, 8] -> [B, 32]``."""
    layers: list[nn.Module] = []
    for c_in, c_out, stride in ((3, 16, 1), (16, 32, 2), (32, 32, 1)):
        bn = nn.BatchNorm2d(c_out)
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
        layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), bn, nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


class BayesHeadNet(nn.Module):
    """:func:`_body` + Bayesian-Torch ``LinearReparameterization(32, 4)``: ``[B, 4]``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _body()
        self.head = LinearReparameterization(32, 4, posterior_rho_init=-2.0)

    def forward(self, x):
        return self.head(self.body(x))[0]


def _export_both(model, x, tmp_path, monkeypatch, **kw) -> tuple[onnx.ModelProto, ...]:
    """The model exported without the split passes and with them (same seed)."""
    assert any(isinstance(p, DedupPass) for p in SPLIT_PASSES)
    plain = export_model(model, x, tmp_path / "plain.onnx", seed=0, split=False, **kw)
    res = export_model(model, x, tmp_path / "dedup.onnx", seed=0, **kw)
    assert any(n.startswith("dedup: ") for n in res.notes)
    return onnx.load(plain.path), onnx.load(res.path)


def _same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, x: torch.Tensor) -> None:
    for s in (8, 3):
        for name, u, v in zip(OUTS, _run(a, x, s), _run(b, x, s), strict=True):
            np.testing.assert_allclose(u, v, rtol=0, atol=1e-6, err_msg=f"{name} at S={s}")


def _ensemble_check(model: onnx.ModelProto, nets: list[nn.Module], x: torch.Tensor) -> None:
    """The exact-member summaries: mean_probs is the uniform average of the members' own
    torch probabilities (float64), atol 1e-5; probs row s is member s mod K."""
    with torch.no_grad():
        mp = torch.stack([n(x) for n in nets]).double().softmax(-1).numpy()
    probs, mean_probs = _run(model, x, 5)[:2]
    np.testing.assert_allclose(mean_probs, mp.mean(0), atol=1e-5)
    np.testing.assert_allclose(probs, mp[np.arange(5) % len(nets)], atol=1e-5)


def test_frozen8_bayesian_head_backbone_once(tmp_path, monkeypatch):
    """frozen:8 of a Bayesian-Torch head on a conv + BatchNorm body: without the pass the
    body's larger convolutions come out 8 times; with it each backbone Conv exactly once and
    the 8 head draws stay 8 Gemms."""
    torch.manual_seed(0)
    net = BayesHeadNet().eval()
    x = example((3, 8, 8), batch=3)
    plain, dedup = _export_both(net, x, tmp_path, monkeypatch, sampling="frozen:8")
    assert _ops(plain)["Conv"] == 1 + 2 * 8  # only the 432-element conv merged by torch
    assert (_ops(dedup)["Conv"], _ops(dedup)["Gemm"]) == (3, 8)
    assert _ops(plain)["Gemm"] == 8
    _same_outputs(plain, dedup, x)
    probs = _run(dedup, x, 8)[0]
    assert np.abs(probs[0] - probs[1]).max() > 1e-3  # the head draws are not merged


@pytest.mark.parametrize("form", ["weight_samples", "multi_head_list"])
def test_ensemble_sharing_the_backbone_runs_it_once(tmp_path, monkeypatch, form):
    """Members with the backbone's weights and their own heads (SG-MCMC samples that differ
    only in the last layer as state dicts; a multi-head ensemble as a list of modules sharing
    one body module): the backbone once, K = 4 Gemms, the exact summaries unchanged."""
    torch.manual_seed(1)
    body = _body()
    heads = [nn.Linear(32, 4) for _ in range(4)]
    nets = [nn.Sequential(body, h).eval() for h in heads]
    if form == "weight_samples":
        model = WeightSamples(copy.deepcopy(nets[0]), [n.state_dict() for n in nets])
    else:
        model = nets
    x = example((3, 8, 8), batch=3)
    plain, dedup = _export_both(model, x, tmp_path, monkeypatch)
    assert _ops(plain)["Conv"] == 1 + 2 * 4
    assert (_ops(dedup)["Conv"], _ops(dedup)["Gemm"]) == (3, 4)
    _same_outputs(plain, dedup, x)
    _ensemble_check(dedup, nets, x)


def test_independent_deep_ensemble_keeps_every_member(tmp_path, monkeypatch):
    """A deep ensemble of independently initialised members shares no weight: every member
    keeps its convolutions and head, and the outputs are the members' own."""
    nets = []
    for i in range(3):
        torch.manual_seed(10 + i)
        nets.append(nn.Sequential(_body(), nn.Linear(32, 4)).eval())
    x = example((3, 8, 8), batch=3)
    plain, dedup = _export_both(nets, x, tmp_path, monkeypatch)
    assert _ops(plain)["Conv"] == _ops(dedup)["Conv"] == 3 * 3
    assert _ops(dedup)["Gemm"] == 3
    _same_outputs(plain, dedup, x)
    _ensemble_check(dedup, nets, x)


def test_gaussian_over_a_subset_shares_the_rest(tmp_path, monkeypatch):
    """frozen:6 of a Gaussian over the last conv and the head (SWAG / Laplace over a subset of
    parameters): the first two convolutions once, the last one and the head per draw."""
    torch.manual_seed(2)
    net = nn.Sequential(_body(), nn.Linear(32, 4)).eval()
    names = ("0.6.weight", "0.6.bias", "1.weight", "1.bias")
    params = dict(net.named_parameters())
    mean = torch.cat([params[n].detach().reshape(-1) for n in names])
    post = VectorGaussian(mean, (DiagTerm(0, torch.full_like(mean, 0.05)),))
    model = WeightGaussian(net, post, param_names=names)
    x = example((3, 8, 8), batch=3)
    plain, dedup = _export_both(model, x, tmp_path, monkeypatch, sampling="frozen:6")
    assert _ops(plain)["Conv"] == 1 + 2 * 6
    assert (_ops(dedup)["Conv"], _ops(dedup)["Gemm"]) == (2 + 6, 6)
    _same_outputs(plain, dedup, x)


@pytest.mark.parametrize("fmt", ["qoperator", "qdq"])
def test_int8_of_the_deduplicated_frozen_graph(tmp_path, fmt):
    """INC static int8 of the deduplicated frozen:8 graph: the shared backbone quantizes once
    (3 int8 convolutions, 8 head Gemms) and the int8 predictive stays within 0.05 of fp32
    with the same argmax (mean_probs on 16 inputs, whose largest and smallest class
    probabilities lie 0.85-0.91 apart; 0.009 seen)."""
    from qbnn.pipeline.quantize import QuantConfig, quantize_model

    torch.manual_seed(0)
    net = BayesHeadNet().eval()
    with torch.no_grad():
        net.head.mu_weight.mul_(30.0)  # confident members: probabilities far from uniform
    x = example((3, 8, 8), batch=16, seed=5)
    src = export_model(net, x[:3], tmp_path / "f8.onnx", sampling="frozen:8", seed=0).path
    calib = example((3, 8, 8), batch=64, seed=6).numpy()
    res = quantize_model(src, tmp_path / f"f8.{fmt}.onnx", QuantConfig(format=fmt), calib=calib)
    int8 = onnx.load(res.path)
    ops = _ops(int8)
    if fmt == "qoperator":
        assert ops["QLinearConv"] == 3 and ops["Conv"] == 0
    else:
        convs = [n for n in int8.graph.node if n.op_type == "Conv"]
        assert len(convs) == 3
        weight_dq = {n.output[0] for n in int8.graph.node if n.op_type == "DequantizeLinear"}
        assert all(c.input[1] in weight_dq for c in convs)
    assert ops["Gemm"] + ops["QGemm"] + ops["MatMulInteger"] + ops["QLinearMatMul"] == 8
    fp32 = _run(onnx.load(src), x, 8)[1]
    low = _run(int8, x, 8)[1]
    assert np.abs(low - fp32).max() < 0.05
    assert (low.argmax(1) == fp32.argmax(1)).all()
