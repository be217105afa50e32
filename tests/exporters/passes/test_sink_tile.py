"""The sink-tile pass (exporters/passes/sink_tile.py): the deterministic prefix of a tiled-batch
graph runs once on ``[B, ...]``, the outputs keep their law and, seeded, their exact values."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from bayesian_torch.layers import LinearFlipout, LinearReparameterization
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from qbnn.exporters import export_model
from qbnn.exporters.families.reference import loop_sampler
from qbnn.exporters.modules.dropout import mc_mode
from qbnn.exporters.passes import SPLIT_PASSES
from qbnn.exporters.passes.sink_tile import SinkTile, TileSite, find_tile
from qbnn.runtimes import Predictor, available_providers
from qbnn.runtimes.onnxgraph import walk_nodes

from tiny_models import bayes_cnn, bbb_mlp, ensemble, example

B = 4


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _run(
    model: onnx.ModelProto, x: np.ndarray, s: int, extra: tuple[str, ...] | list[str] = ()
) -> list[np.ndarray]:
    """Outputs (and the ``extra`` intermediate tensors, appended as outputs) for one seeded call."""
    m = copy.deepcopy(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in extra if n not in have)
    names = [o.name for o in m.graph.output]
    want = [o.name for o in model.graph.output] + list(extra)
    feed = {"input": x, "num_samples": np.array(s)}
    out = dict(zip(names, _session(m).run(None, feed), strict=True))
    return [out[n] for n in want]


def _after_samples(model: onnx.ModelProto) -> set[str]:
    """Op types of the nodes whose value depends on ``num_samples`` (the per-sample part)."""
    tainted, ops = {"num_samples"}, set()
    for node in model.graph.node:
        if any(i in tainted for i in node.input):
            tainted.update(node.output)
            ops.add(node.op_type)
    return ops


# --- a hand-built tiled graph -------------------------------------------------------------------


def _tiled_graph(bad: onnx.NodeProto | None = None) -> onnx.ModelProto:
    """``input [B, 2, 4, 4]`` tiled to ``[S*B, ...]`` as the exporter does, then Conv, Relu,
    GlobalAveragePool, Flatten, a dropout-like mask ``u >= 0.3`` and ``[S, B, 3]``; ``bad``
    (reading ``relu``, writing ``mixed``) replaces the pooling when given."""
    w = np.random.default_rng(0).standard_normal((3, 2, 3, 3)).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array(5, np.int64), "num_samples"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([1, 1, 1], np.int64), "chw"),
        numpy_helper.from_array(np.array([-1, 2, 4, 4], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.array(0.3, np.float32), "p"),
    ]
    pooled = bad.output[0] if bad is not None else "pool"
    nodes = [
        helper.make_node("Reshape", ["num_samples", "one"], ["s"], name="s"),
        helper.make_node("Shape", ["input"], ["b"], name="b", start=0, end=1),
        helper.make_node("Concat", ["s", "b", "chw"], ["expand_shape"], name="cat", axis=0),
        helper.make_node("Unsqueeze", ["input", "axis0"], ["u"], name="unsqueeze"),
        helper.make_node("Expand", ["u", "expand_shape"], ["e"], name="expand"),
        helper.make_node("Reshape", ["e", "flat_shape"], ["tiled"], name="tile"),
        helper.make_node("Conv", ["tiled", "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        bad or helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
        helper.make_node("RandomUniformLike", [pooled], ["noise"], name="qbnn/random/0", seed=7.0),
        helper.make_node("GreaterOrEqual", ["noise", "p"], ["keep"], name="keep"),
        helper.make_node("Where", ["keep", pooled, "p"], ["masked"], name="mask"),
        helper.make_node("Concat", ["s", "b", "minus1"], ["out_shape"], name="out_cat", axis=0),
        helper.make_node("Reshape", ["masked", "out_shape"], ["out"], name="out"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiled",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, 4, 4]),
            helper.make_tensor_value_info("num_samples", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["s", "batch", "n"])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _x(shape=(B, 2, 4, 4), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_hand_built_graph_exact_structure_and_outputs():
    before = _tiled_graph()
    after = SinkTile()(copy.deepcopy(before))
    assert after.modified and "3 op(s) after the sample tile (1 Conv/Gemm/MatMul)" in after.notes[0]
    model = after.model
    onnx.checker.check_model(model, full_check=True)
    got = [(n.op_type, n.name, list(n.input), list(n.output)) for n in model.graph.node]
    assert got == [
        ("Reshape", "s", ["num_samples", "one"], ["s"]),
        ("Shape", "b", ["input"], ["b"]),
        ("Conv", "conv/once", ["input", "w"], ["conv/once"]),
        ("Relu", "relu/once", ["conv/once"], ["relu/once"]),
        ("GlobalAveragePool", "pool/once", ["relu/once"], ["pool/once"]),
        ("Concat", "qbnn/sink/repeats_4", ["s", "qbnn/sink/ones_3"], ["qbnn/sink/repeats_4"]),
        ("Tile", "qbnn/sink/tile/pool", ["pool/once", "qbnn/sink/repeats_4"], ["pool"]),
        ("RandomUniformLike", "qbnn/random/0", ["pool"], ["noise"]),
        ("GreaterOrEqual", "keep", ["noise", "p"], ["keep"]),
        ("Where", "mask", ["keep", "pool", "p"], ["masked"]),
        ("Concat", "out_cat", ["s", "b", "minus1"], ["out_shape"]),
        ("Reshape", "out", ["masked", "out_shape"], ["out"]),
    ]
    inits = {t.name for t in model.graph.initializer}
    assert "flat_shape" not in inits and "chw" not in inits  # the dead tile's constants left
    x = _x()
    for s in (1, 5, 7):  # num_samples overridden: the re-tile follows it
        (y0,), (y1, pool) = _run(before, x, s), _run(model, x, s, ["pool/once"])
        assert y1.shape == (s, B, 3) and pool.shape == (B, 3, 1, 1)
        np.testing.assert_array_equal(y0, y1)  # same seeded draws, same values


_CONSTS = {
    "ax0": np.array([0], np.int64),
    "ax2": np.array([2], np.int64),
    "ax23": np.array([2, 3], np.int64),
    "moved": np.array([-1, 3, 4, 8], np.int64),
    "flat48": np.array([-1, 48], np.int64),
    "start1": np.array([1], np.int64),
    "end3": np.array([3], np.int64),
    "c1311": np.full((1, 3, 1, 1), 0.5, np.float32),
}


def _with(op: str, inputs: list[str], outputs: tuple[str, ...] = ("mixed",), **attrs):
    """The tiled graph with ``op`` (reading ``relu`` and the named constants) in place of the
    pooling."""
    node = helper.make_node(op, ["relu", *inputs], list(outputs), name="mix", **attrs)
    model = _tiled_graph(node)
    model.graph.initializer.extend(numpy_helper.from_array(_CONSTS[i], i) for i in inputs)
    return model


@pytest.mark.parametrize(
    "op, inputs, attrs",
    [
        ("ReduceMean", ["ax0"], {"keepdims": 1}),  # a reduction over the batch axis
        ("Softmax", [], {"axis": 0}),  # normalised across rows
        ("Reshape", ["moved"], {}),  # [N, 3, 4, 4] -> [N/2, 3, 4, 8]: rows merged
        ("Transpose", [], {"perm": [1, 0, 2, 3]}),  # batch axis moved
        ("Flatten", [], {"axis": 2}),  # [N*3, 16]
        ("MaxPool", [], {"kernel_shape": [2, 2], "outputs": ("mixed", "indices")}),  # flat index
    ],
)
def test_an_op_that_mixes_rows_stops_the_motion(op, inputs, attrs):
    """The Conv and Relu move; the row-mixing op reads their re-tiled output, and the outputs
    are unchanged."""
    before = _with(op, inputs, attrs.pop("outputs", ("mixed",)), **attrs)
    result = SinkTile()(copy.deepcopy(before))
    assert result.modified and "2 op(s)" in result.notes[0]
    model = result.model
    onnx.checker.check_model(model, full_check=True)
    producer = {o: n for n in model.graph.node for o in n.output}
    mix = next(n for n in model.graph.node if n.name == "mix")
    assert producer[mix.input[0]].op_type == "Tile"
    assert [n.name for n in model.graph.node if n.op_type == "Conv"] == ["conv/once"]
    x = _x()
    for s in (2, 3):
        np.testing.assert_array_equal(_run(before, x, s)[0], _run(model, x, s)[0])


@pytest.mark.parametrize(
    "op, inputs, attrs",
    [
        ("Add", ["c1311"], {}),  # a constant broadcast over the rows
        ("Transpose", [], {"perm": [0, 2, 3, 1]}),
        ("Slice", ["start1", "end3", "ax2"], {}),
        ("ReduceMean", ["ax23"], {"keepdims": 1}),
        ("Softmax", [], {"axis": 1}),
        ("MaxPool", [], {"kernel_shape": [2, 2]}),
        ("Reshape", ["flat48"], {}),  # [N, 3, 4, 4] -> [N, 48]
    ],
)
def test_a_row_wise_op_moves(op, inputs, attrs):
    """The op joins the Conv and Relu on the un-tiled rows; its output is the one re-tiled."""
    before = _with(op, inputs, **attrs)
    result = SinkTile()(copy.deepcopy(before))
    assert result.modified and "3 op(s)" in result.notes[0]
    model = result.model
    onnx.checker.check_model(model, full_check=True)
    tile = next(n for n in model.graph.node if n.op_type == "Tile")
    assert tile.input[0] == "mixed/once" and tile.output[0] == "mixed"
    x = _x()
    for s in (1, 3):
        np.testing.assert_array_equal(_run(before, x, s)[0], _run(model, x, s)[0])


@pytest.mark.parametrize("head", ["shape_of_rows", "samples_times_batch"])
def test_reshape_with_a_computed_batch_dim_moves(head):
    """``x.view(x.size(0), -1)`` on the tiled rows: the shape's head is computed, from the rows'
    own ``Shape`` or as ``S * B``; both are N, so the Reshape moves with the Conv."""
    before = _tiled_graph(helper.make_node("Reshape", ["relu", "rows"], ["mixed"], name="mix"))
    if head == "shape_of_rows":
        extra = [helper.make_node("Shape", ["relu"], ["n"], name="n", start=0, end=1)]
    else:
        extra = [helper.make_node("Mul", ["s", "b"], ["n"], name="n")]
    extra.append(helper.make_node("Concat", ["n", "minus1"], ["rows"], name="rows", axis=0))
    nodes = list(before.graph.node)
    del before.graph.node[:]
    before.graph.node.extend(nodes[:8] + extra + nodes[8:])
    onnx.checker.check_model(before, full_check=True)
    result = SinkTile()(copy.deepcopy(before))
    assert result.modified and "3 op(s)" in result.notes[0] and "1 tensor(s)" in result.notes[0]
    model = result.model
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.index("Reshape", 1) < ops.index("Tile") and "Shape" not in ops[2:]
    assert "Mul" not in ops
    x = _x()
    for s in (2, 5):
        np.testing.assert_array_equal(_run(before, x, s)[0], _run(model, x, s)[0])


def test_find_tile_names_source_samples_and_tiled():
    assert find_tile(_tiled_graph()) == TileSite(source="input", samples="s", tiled="tiled")
    model = _tiled_graph()
    model.graph.node[2].input[:] = ["b", "s", "chw"]  # [B, S, ...]: batch-major, not a tile
    assert find_tile(model) is None


def test_a_region_without_conv_gemm_or_matmul_is_left_alone():
    """Only a Relu before the first draw: moving it would cost a re-tile for nothing."""
    model = _tiled_graph()
    nodes = list(model.graph.node)
    nodes[7].input[0] = "tiled"  # Relu(tiled); the Conv is dropped
    del model.graph.node[:]
    model.graph.node.extend(nodes[:6] + nodes[7:])
    onnx.checker.check_model(model, full_check=True)
    blob = model.SerializeToString()
    assert not SinkTile()(model).modified and model.SerializeToString() == blob


def test_random_op_right_after_the_tile_leaves_the_graph_alone():
    """Dropout on the tiled input itself, the Conv after it: nothing row-wise comes before the
    first draw, so there is nothing to move."""
    model = _tiled_graph()
    nodes = list(model.graph.node)
    nodes[9].input[0] = nodes[11].input[1] = "tiled"  # the mask draws on the tiled input
    nodes[6].input[0] = "masked"  # Conv(masked)
    nodes[13].input[0] = "relu"  # out = Reshape(Relu(Conv(masked)), [S, B, -1])
    del model.graph.node[:]
    model.graph.node.extend(nodes[:6] + nodes[9:12] + nodes[6:8] + nodes[12:])
    onnx.checker.check_model(model, full_check=True)
    blob = model.SerializeToString()
    result = SinkTile()(model)
    assert not result.modified and not result.notes
    assert result.model.SerializeToString() == blob


# --- exported models ----------------------------------------------------------------------------


class DropoutConvNet(nn.Module):
    """Conv, BatchNorm, ReLU, max and average pooling, flatten, Dropout(0.3), Linear.
    ``[B, 1, 8, 8] -> [B, 3]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = nn.functional.avg_pool2d(nn.functional.max_pool2d(h, 2), 2).flatten(1)
        return self.fc(self.drop(h))


class BayesHeadConvNet(nn.Module):
    """A deterministic conv body and a Bayesian-Torch Linear head. ``[B, 1, 8, 8] -> [B, 3]``."""

    def __init__(self, head) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = head(6, 3, posterior_rho_init=-1.0)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.fc(h)[0]


def _seeded(factory):
    torch.manual_seed(0)
    model = factory()
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):  # non-trivial running statistics
            mod.running_mean.normal_(0.0, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
    return model


MODELS = {
    "mcdropout": (lambda: _seeded(DropoutConvNet), None, lambda m: mc_mode(m)),
    "lrt": (lambda: _seeded(lambda: BayesHeadConvNet(LinearReparameterization)), "lrt", None),
    "flipout": (lambda: _seeded(lambda: BayesHeadConvNet(LinearFlipout)), "flipout", None),
    "flipout-lrt": (lambda: _seeded(lambda: BayesHeadConvNet(LinearFlipout)), "lrt", None),
}


def _export(model, x, path, monkeypatch=None, **kw) -> onnx.ModelProto:
    """The export's graph; with ``monkeypatch``, the graph as it was before the split passes."""
    split = monkeypatch is None
    export_model(model, x, path, verify=False, seed=11, num_samples=16, split=split, **kw)
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """(before the pass, default export) per case."""
    out = {}
    mp = pytest.MonkeyPatch()
    for case, (factory, sampling, _) in MODELS.items():
        d = tmp_path_factory.mktemp(case)
        x = example((1, 8, 8), B)
        kw = {"posterior": "mcdropout"} if case == "mcdropout" else {"sampling": sampling}
        raw = _export(factory(), x, d / "raw.onnx", mp, **kw)
        out[case] = (raw, _export(factory(), x, d / "default.onnx", **kw))
    return out


def test_the_pass_is_registered():
    assert any(isinstance(p, SinkTile) for p in SPLIT_PASSES)


@pytest.mark.parametrize("case", list(MODELS))
def test_conv_body_runs_once_on_the_batch(graphs, case):
    raw, model = graphs[case]
    onnx.checker.check_model(model, full_check=True)
    assert "Conv" in _after_samples(raw)  # before: the body runs on all S*B rows
    assert "Conv" not in _after_samples(model) and find_tile(model) is None
    names = [n.name for n in walk_nodes(model.graph)]
    assert len(names) == len(set(names))
    conv = next(n.output[0] for n in model.graph.node if n.op_type == "Conv")
    out = _run(model, example((1, 8, 8), B).numpy(), 16, [conv])
    assert out[-1].shape[0] == B and out[0].shape[:2] == (16, B)


@pytest.mark.parametrize("case", list(MODELS))
def test_seeded_outputs_and_noise_templates_are_unchanged(graphs, case):
    """Every random op reads a template of the same shape, so a seeded graph draws the same
    noise and every output is the same as before the pass (to 1e-6)."""
    raw, model = graphs[case]
    rand = [n.input[0] for n in model.graph.node if n.op_type == "RandomUniformLike"]
    assert rand == [n.input[0] for n in raw.graph.node if n.op_type == "RandomUniformLike"]
    x = example((1, 8, 8), B, seed=5).numpy()
    for s in (3, 16):
        before, after = _run(raw, x, s, rand), _run(model, x, s, rand)
        for a, b in zip(before, after, strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", list(MODELS))
def test_mean_probs_match_torch_mc(graphs, case):
    """mean_probs of the split graph against the torch model's own MC loop, 1500 samples each
    (fixed seeds); every entry within 5 standard errors of the difference."""
    _, model = graphs[case]
    factory, _, mode = MODELS[case]
    torch_model = factory()
    torch_model = mode(torch_model) if mode else torch_model.eval()
    x = example((1, 8, 8), B, seed=9)
    s = 1500
    probs = _run(model, x.numpy(), s)[0]  # [S, B, C]
    ref = torch.softmax(loop_sampler(torch_model)(x, s, torch.Generator().manual_seed(3)), -1)
    ref = ref.numpy()
    se = np.sqrt(probs.var(0) / s + ref.var(0) / s)
    assert ref.std(0).max() > 1e-2  # visibly stochastic, so the check can fail
    z = np.abs(probs.mean(0) - ref.mean(0)) / se
    assert z.max() < 5.0, z


def _raw(model, x, tmp_path, monkeypatch, **kw) -> onnx.ModelProto:
    return _export(model, x, tmp_path / "raw.onnx", monkeypatch, **kw)


@pytest.mark.parametrize(
    "make, shape, kw",
    [
        (bayes_cnn, (1, 8, 8), {"sampling": "weight"}),  # the sample loop's Scan
        (bayes_cnn, (1, 8, 8), {"sampling": "frozen:4"}),  # K unrolled copies
        (ensemble, (6,), {}),  # exact ensemble
        (bbb_mlp, (6,), {"posterior": "stochastic"}),  # its forward per sample (a Scan)
    ],
    ids=["weight", "frozen", "ensemble", "stochastic"],
)
def test_graphs_without_the_tile_are_left_alone(make, shape, kw, tmp_path, monkeypatch):
    raw = _raw(make(), example(shape), tmp_path, monkeypatch, **kw)
    blob = raw.SerializeToString()
    result = SinkTile()(raw)
    assert not result.modified and result.model.SerializeToString() == blob


def test_laplace_graph_is_left_alone(tmp_path, monkeypatch):
    import trainers as T

    d = T.iris()
    la = T.laplace(T.mlp(4, 3), d.x_train, d.y_train, "classification", "last_layer", "diag")
    raw = _raw(la, d.x_test[:B], tmp_path, monkeypatch)
    blob = raw.SerializeToString()
    assert not SinkTile()(raw).modified and raw.SerializeToString() == blob


@pytest.mark.skipif("openvino" not in available_providers(), reason="openvino not installed")
@pytest.mark.parametrize("case", list(MODELS))
def test_split_graph_runs_on_openvino(graphs, case, tmp_path):
    """OpenVINO compiles the split graph (Tile with a run-time repeat count); MC means over
    S = 1500 within 5 SE (+1e-4) of the CPU provider's."""
    path = tmp_path / "m.onnx"
    onnx.save(graphs[case][1], str(path))
    x = example((1, 8, 8), 3, seed=8).numpy()
    a = Predictor(path, provider="openvino", seed=1).predict(x, 1500, return_samples=True)
    b = Predictor(path, provider="cpu", seed=2).predict(x, 1500, return_samples=True)
    se = np.sqrt((a.probs.var(0) + b.probs.var(0)) / 1500)
    assert b.probs.std(0).max() > 1e-2
    assert np.all(np.abs(a.mean_probs - b.mean_probs) <= 5 * se + 1e-4)


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_split_graph_quantizes_like_a_deterministic_prefix(graphs, fmt, tmp_path):
    """int8 of the split MC-dropout graph: the Conv of the prefix is quantized and still runs
    once on [B, ...]; mean_probs stay within 0.05 of fp32 (S = 400, same seeds)."""
    from qbnn.pipeline.quantize import QuantConfig, quantize_model

    src = tmp_path / "m.onnx"
    onnx.save(graphs["mcdropout"][1], str(src))
    calib = example((1, 8, 8), 64, seed=3).numpy()
    res = quantize_model(src, tmp_path / "q.onnx", QuantConfig(format=fmt), calib=calib)
    q = onnx.load(str(res.path))
    ops = {n.op_type for n in q.graph.node}
    assert ("QLinearConv" in ops) if fmt == "qoperator" else ("DequantizeLinear" in ops)
    per_sample = _after_samples(q)
    assert not per_sample & {"Conv", "QLinearConv", "ConvInteger"}
    x = example((1, 8, 8), B, seed=5).numpy()
    fp32 = Predictor(src, provider="cpu", seed=4).predict(x, 400)
    int8 = Predictor(res.path, provider="cpu", seed=4).predict(x, 400)
    assert np.abs(fp32.mean_probs - int8.mean_probs).max() < 0.05
