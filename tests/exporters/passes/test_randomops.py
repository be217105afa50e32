"""Random ops qbnn does not own (issue 14, kind 2): rewritten into seeded ``RandomUniformLike``
noise with the same law, or refused naming the op and its module; the graph-level guard holds
for every registered family.

Statistical checks use fixed seeds; each tolerance is stated at its assertion.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from qbnn.exporters import (
    DiagTerm,
    SwagPosterior,
    VectorGaussian,
    WeightGaussian,
    export_model,
    known_families,
)
from qbnn.exporters.modules.dropout import mc_mode
from qbnn.exporters.passes.randomops import check_random_ops, foreign_random_ops, own_random_ops
from qbnn.runtimes import Predictor
from qbnn.runtimes.errors import ExportError, UnsupportedLayerError
from qbnn.runtimes.seeding import random_nodes, reseed

from tiny_models import (
    bayes_mlp,
    bbb_mlp,
    dropout_mlp,
    ensemble,
    example,
    flipout_cnn,
    ort_session,
    plain_mlp,
    stacked_dropout,
)


class LSTMDropout(nn.Module):
    """Issue 14: ``nn.LSTM(num_layers=2, dropout=0.5)`` in an MC-dropout model.
    [B, 5, 4] -> [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(4, 8, num_layers=2, dropout=0.5, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h, _ = self.lstm(x)
        return self.fc(h[:, -1])


class InputNoise(nn.Module):
    """Issue 14: ``x + 0.3 * torch.randn_like(x)`` in forward; regression, [B, 6] -> [B, 6]."""

    def forward(self, x):
        return x + 0.3 * torch.randn_like(x)


def test_lstm_dropout_survives_as_qbnn_noise(tmp_path):
    """The LSTM's inter-layer Dropout(training_mode=True) becomes qbnn's seeded uniform mask:
    no Dropout left for ONNX Runtime's optimizer to delete, and the graph's predictive (default
    ORT optimizations) matches torch's MC average of the model itself. S = 2000 each side:
    every mean_probs element within 4.5 standard errors; per-element spread within 15 %."""
    x = example((5, 4), batch=3)
    res = export_model(LSTMDropout(), x, tmp_path / "lstm.onnx", posterior="mcdropout", seed=0)
    assert any("Dropout from module 'lstm' (LSTM" in n for n in res.notes)
    m = onnx.load(str(res.path))
    assert [n for n in m.graph.node if n.op_type == "Dropout"] == []
    assert {n.op_type for n in random_nodes(m)} == {"RandomUniformLike"}
    s = 2000
    feed = {"input": x.numpy(), "num_samples": np.array(s)}
    graph = ort_session(res.path).run(["probs"], feed)[0]
    net = mc_mode(LSTMDropout())
    torch.manual_seed(7)
    with torch.no_grad():
        ref = torch.stack([torch.softmax(net(x), -1) for _ in range(s)]).numpy()
    se = np.sqrt((graph.var(0) + ref.var(0)) / s)
    assert np.all(np.abs(graph.mean(0) - ref.mean(0)) <= 4.5 * se + 1e-4)
    sp_g, sp_t = graph.std(0).mean(), ref.std(0).mean()
    assert sp_t > 1e-3 and abs(sp_g - sp_t) <= 0.15 * sp_t, (sp_g, sp_t)


@pytest.mark.parametrize("provider", ["cpu", "openvino"])
def test_randn_like_in_forward_is_portable_box_muller(tmp_path, provider):
    """Issue 14: the user's RandomNormalLike becomes Box-Muller from RandomUniformLike, so the
    noise is N(0, 0.3^2) on OpenVINO as well. 4000 samples x 6 values: per-element mean within
    0.03 of x and pooled std within 4 % of 0.3 (both > 5 standard errors)."""
    x = example((6,), batch=2)
    res = export_model(InputNoise(), x, tmp_path / "noise.onnx", task="regression")
    assert res.family == "stochastic"
    m = onnx.load(str(res.path))
    assert foreign_random_ops(m) == []
    assert all(n.op_type == "RandomUniformLike" for n in random_nodes(m))
    pred = Predictor(res.path, provider=provider, seed=3)
    samples = pred.predict(x.numpy(), 4000, return_samples=True).samples  # [S, B, 6]
    assert np.abs(samples.mean(0) - x.numpy()).max() < 0.03
    assert abs((samples - x.numpy()).std() - 0.3) < 0.04 * 0.3


def test_multinomial_is_refused_naming_the_module(tmp_path):
    class Sampler(nn.Module):
        def forward(self, h):
            return torch.multinomial(torch.softmax(h, -1), 1).float()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.drop, self.sampler = nn.Linear(6, 3), nn.Dropout(0.2), Sampler()

        def forward(self, x):
            h = self.fc(self.drop(x))
            return h + self.sampler(h)

    msg = (
        "the random op Multinomial from module 'sampler' (Sampler, aten.multinomial.default) "
        "cannot be exported: torch.multinomial"
    )
    with pytest.raises(UnsupportedLayerError, match=__import__("re").escape(msg)):
        export_model(Net(), example((6,)), tmp_path / "m.onnx", posterior="mcdropout")
    assert not (tmp_path / "m.onnx").exists()


def _graph(nodes, consts, out_shape, body_op: str | None = None) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    outs = [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, out_shape) for n in nodes]
    g = helper.make_graph(nodes, "g", [], outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_rewrites_keep_each_law_on_a_hand_built_graph():
    """Five foreign random ops, one per rewrite, on 20000 draws each (seeded): normal mean
    within 0.03 and std within 0.03 of (2, 0.5); uniform mean within 0.03 of 1 on [-1, 3);
    Bernoulli rate within 0.015 of 0.3; dropout zero rate within 0.015 of 0.25 with kept values
    exactly 1 / 0.75; RandomNormalLike std within 0.03 of 1."""
    n = 20000
    nodes = [
        helper.make_node("RandomNormal", [], ["normal"], shape=[n], mean=2.0, scale=0.5),
        helper.make_node("RandomUniform", [], ["uniform"], shape=[n], low=-1.0, high=3.0),
        helper.make_node("Bernoulli", ["p"], ["bern"]),
        helper.make_node("Dropout", ["ones", "ratio", "train"], ["drop"]),
        helper.make_node("RandomNormalLike", ["ones"], ["like"]),
    ]
    consts = {
        "p": np.full(n, 0.3, np.float32),
        "ones": np.ones(n, np.float32),
        "ratio": np.array(0.25, np.float32),
        "train": np.array(True),
    }
    m = _graph(nodes, consts, [n])
    with pytest.raises(ExportError, match="random op"):
        check_random_ops(m)
    notes = own_random_ops(m)
    assert len(notes) == 5
    from qbnn.exporters.passes.finalize import name_nodes

    name_nodes(m)
    check_random_ops(m)
    reseed(m, 0)
    onnx.checker.check_model(m)
    import onnxruntime as ort

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in m.graph.output], sess.run(None, {}), strict=True))
    assert abs(out["normal"].mean() - 2.0) < 0.03 and abs(out["normal"].std() - 0.5) < 0.03
    assert out["uniform"].min() >= -1 and out["uniform"].max() < 3
    assert abs(out["uniform"].mean() - 1.0) < 0.03
    assert abs(out["bern"].mean() - 0.3) < 0.015
    assert abs((out["drop"] == 0).mean() - 0.25) < 0.015
    assert np.allclose(out["drop"][out["drop"] != 0], 1 / 0.75)
    assert abs(out["like"].std() - 1.0) < 0.03


def test_inference_mode_dropout_is_left_alone():
    nodes = [helper.make_node("Dropout", ["ones", "ratio", "train"], ["drop"])]
    consts = {"ones": np.ones(4, np.float32), "ratio": np.array(0.5, np.float32)}
    m = _graph(nodes, {**consts, "train": np.array(False)}, [4])
    assert own_random_ops(m) == [] and foreign_random_ops(m) == []


def _laplace():
    from trainers import laplace

    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    return laplace(plain_mlp(), x, y, "classification", "last_layer", "kron")


def _diag_gaussian():
    net = plain_mlp()
    mean = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
    return WeightGaussian(net, VectorGaussian(mean, (DiagTerm(0, torch.full_like(mean, 0.05)),)))


def _swag():
    net = plain_mlp()
    mean = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
    return SwagPosterior(net, mean, torch.full_like(mean, 0.01))


#: one tiny posterior per registered family (a new family without one fails below)
FAMILY_CASES = {
    "meanfield": (bayes_mlp, (6,)),
    "flipout": (flipout_cnn, (1, 8, 8)),
    "mcdropout": (dropout_mlp, (6,)),
    "ensemble": (ensemble, (6,)),
    "stochastic": (bbb_mlp, (6,)),
    "gaussian": (_diag_gaussian, (6,)),
    "swag": (_swag, (6,)),
    "laplace": (_laplace, (6,)),
    "stacked": (stacked_dropout, (6,)),  # MC samples stacked on the batch axis: dropout masks
}


def test_every_family_has_a_random_op_case():
    assert set(FAMILY_CASES) == set(known_families())


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_every_random_op_of_every_family_is_owned(tmp_path, family):
    """The guard that runs on every export, checked here on each family's graph: every random
    node, Scan bodies included, is a RandomUniformLike named qbnn/random/<i>, seeded."""
    factory, shape = FAMILY_CASES[family]
    res = export_model(
        factory(), example(shape), tmp_path / "m.onnx", posterior=family, seed=0, verify=False
    )
    m = onnx.load(str(res.path))
    assert foreign_random_ops(m) == []
    for node in random_nodes(m):
        assert node.op_type == "RandomUniformLike" and node.name.startswith("qbnn/random/")
        assert any(a.name == "seed" for a in node.attribute)
