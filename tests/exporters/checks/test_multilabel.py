"""Multi-label heads: K independent Bernoulli labels, never a softmax over them (issue 22, kind 5).

The issue's case (shared/cases/bh_01_multilabel.py): an MC-dropout net ending in ``nn.Sigmoid``
over K = 5 labels was exported as a 5-class softmax (graph rows summed to 1.000 where torch's
per-label probabilities sum to 2.4-2.6; max gap 0.656). Statistical checks compare the graph's
MC mean per label with the torch model's own MC average (dropout on) over ``S`` samples on both
sides, within 5 standard errors of the difference plus 1e-3.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from qbnn.exporters import export_model
from qbnn.exporters.modules.dropout import mc_mode
from qbnn.runtimes import Predictor
from qbnn.runtimes.contract import LABEL_OUTPUTS, MULTILABEL_OUTPUTS
from qbnn.runtimes.errors import ConfigError, UnsupportedLayerError

from tiny_models import BayesMLP, example, ort_session

S = 4000  # MC samples on both sides of every statistical comparison
K, F = 5, 12


def bh01_net() -> nn.Sequential:
    """The issue's net: 12 -> 32 -> dropout 0.2 -> 5 -> Sigmoid, biases making labels decisive."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(F, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, K), nn.Sigmoid()
    )
    with torch.no_grad():
        net[3].bias.copy_(torch.tensor([3.0, -3.0, 2.0, -2.0, 0.0]))
    return net.eval()


class InlineSigmoid(nn.Module):
    """Logits net whose forward ends in ``torch.sigmoid`` (no module), or returns logits."""

    def __init__(self, sigmoid: bool = True) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fc1, self.drop, self.fc2 = nn.Linear(F, 24), nn.Dropout(0.3), nn.Linear(24, 4)
        with torch.no_grad():
            self.fc2.bias.copy_(torch.tensor([2.5, -2.5, 1.0, 0.0]))
        self.sigmoid = sigmoid

    def forward(self, x):
        z = self.fc2(self.drop(torch.relu(self.fc1(x))))
        return torch.sigmoid(z) if self.sigmoid else z


def _torch_mc(model: nn.Module, x: torch.Tensor, s: int = S, seed: int = 7) -> np.ndarray:
    """The user's own MC inference: ``s`` forward passes with dropout on -> ``[S, B, K]``."""
    net = mc_mode(model)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.stack([net(x) for _ in range(s)]).double().numpy()


def _hb(p: np.ndarray) -> np.ndarray:
    q = 1.0 - p
    return -(p * np.log(np.clip(p, 1e-12, None)) + q * np.log(np.clip(q, 1e-12, None)))


def _within_se(graph: np.ndarray, ref: np.ndarray, z: float = 5.0) -> None:
    """Per element, graph mean vs torch mean over axis 0 within ``z`` SE + 1e-3."""
    se = np.sqrt((graph.var(0) + ref.var(0)) / graph.shape[0])
    diff = np.abs(graph.mean(0) - ref.mean(0))
    assert (diff <= z * se + 1e-3).all(), f"max diff {diff.max():.4f}, se {se.max():.4f}"


def _meta(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_bh01_sigmoid_head_is_multilabel_and_matches_torch(tmp_path):
    """Issue case bh_01: per-label means equal torch's MC average within 5 SE; rows do not
    sum to 1 (torch: 2.4-2.6); per-label entropies, BALD and their sums are consistent."""
    net, x = bh01_net(), torch.randn(8, F, generator=torch.Generator().manual_seed(0))
    res = export_model(net, x, tmp_path / "ml.onnx", num_samples=16, seed=0)
    meta = _meta(res.path)
    assert meta["qbnn.head"] == "multilabel_probs" and meta["qbnn.multilabel"] == "true"
    assert meta["qbnn.num_classes"] == str(K)
    assert [o.name for o in onnx.load(str(res.path)).graph.output] == list(MULTILABEL_OUTPUTS)
    out = Predictor(res.path, seed=0).predict(x.numpy(), S, return_samples=True)
    ref = _torch_mc(bh01_net(), x)  # [S, 8, 5] sigmoid probabilities
    graph = out.probs.astype(np.float64)
    assert out.multilabel and out.mean_probs.shape == (8, K)
    _within_se(graph, ref)
    # the symptom: rows summed to 1.000; torch's per-label probabilities sum to 2.4-2.6
    sums = out.mean_probs.sum(1)
    assert ref.mean(0).sum(1).min() > 2.3 and sums.min() > 2.3
    np.testing.assert_allclose(sums, ref.mean(0).sum(1), atol=0.02)
    # per-label uncertainty: H(mean) exactly, E[H(p_s)] within SE of torch's, BALD >= 0
    lpe, lee, lmi = (
        out.label_predictive_entropy,
        out.label_expected_entropy,
        out.label_mutual_information,
    )
    np.testing.assert_allclose(lpe, _hb(out.mean_probs.astype(np.float64)), atol=2e-5)
    _within_se(_hb(graph), _hb(ref))
    np.testing.assert_allclose(lee, _hb(graph).mean(0), atol=2e-5)
    np.testing.assert_allclose(lmi, np.clip(lpe - lee, 0, None), atol=1e-6)
    assert (lmi >= 0).all() and lmi.max() > 1e-3
    for total, per_label in (
        (out.predictive_entropy, lpe),
        (out.expected_entropy, lee),
        (out.mutual_information, lmi),
    ):
        np.testing.assert_allclose(total, per_label.sum(1), rtol=1e-5, atol=1e-6)


def test_inline_torch_sigmoid_detected(tmp_path):
    """``return torch.sigmoid(z)`` (no nn.Sigmoid module) is detected the same way."""
    x = example((F,), batch=6)
    res = export_model(InlineSigmoid(), x, tmp_path / "m.onnx", seed=1)
    assert _meta(res.path)["qbnn.head"] == "multilabel_probs"
    out = Predictor(res.path, seed=1).predict(x.numpy(), S, return_samples=True)
    _within_se(out.probs.astype(np.float64), _torch_mc(InlineSigmoid(), x))


def test_logits_with_head_multilabel(tmp_path):
    """K logits + ``head='multilabel'``: the graph applies a sigmoid per label (no softmax)."""
    x = example((F,), batch=6)
    res = export_model(InlineSigmoid(False), x, tmp_path / "m.onnx", head="multilabel", seed=2)
    meta = _meta(res.path)
    assert meta["qbnn.head"] == "multilabel" and meta["qbnn.multilabel"] == "true"
    out = Predictor(res.path, seed=2).predict(x.numpy(), S, return_samples=True)
    ref = 1.0 / (1.0 + np.exp(-_torch_mc(InlineSigmoid(False), x)))
    _within_se(out.probs.astype(np.float64), ref)
    assert ref.mean(0).max() > 0.85 and abs(out.mean_probs.sum(1) - 1.0).min() > 0.05
    # without head= the same logits are one categorical (softmax), as before: rows sum to 1
    plain = export_model(InlineSigmoid(False), x, tmp_path / "c.onnx", seed=2)
    assert _meta(plain.path)["qbnn.head"] == "logits" and "qbnn.multilabel" not in _meta(plain.path)


def test_bayesian_torch_weight_mode_multilabel(tmp_path):
    """The sample-loop (Scan) construction applies the head too; its self-check (on) compares
    the graph's per-label probabilities with Bayesian-Torch's own sampler."""
    torch.manual_seed(0)
    x = example((6,))
    res = export_model(BayesMLP(), x, tmp_path / "m.onnx", head="multilabel", sampling="weight")
    assert res.fidelity is not None and res.fidelity.output == "probs"
    names = list(MULTILABEL_OUTPUTS)
    feed = {"input": x.numpy(), "num_samples": np.array(64, dtype=np.int64)}
    got = dict(zip(names, ort_session(res.path).run(names, feed), strict=True))
    assert got["probs"].shape == (64, 4, 3)
    np.testing.assert_allclose(got["mean_probs"], got["probs"].mean(0), atol=1e-6)
    for name in LABEL_OUTPUTS:
        assert got[name].shape == (4, 3)


def test_ensemble_of_sigmoid_members_is_exact(tmp_path):
    """Exact posterior: the per-label mean is the members' average, no renormalisation."""
    members = []
    for i in range(3):
        torch.manual_seed(i)
        members.append(nn.Sequential(nn.Linear(F, 8), nn.ReLU(), nn.Linear(8, K), nn.Sigmoid()))
    x = example((F,))
    res = export_model(members, x, tmp_path / "m.onnx", num_samples=3)
    assert _meta(res.path)["qbnn.head"] == "multilabel_probs"
    out = Predictor(res.path).predict(x.numpy(), 3)
    with torch.no_grad():
        ref = torch.stack([m(x) for m in members]).mean(0).numpy()
    np.testing.assert_allclose(out.mean_probs, ref, atol=1e-6)


class Clamped(nn.Module):
    """Outputs in [0, 1] with rows not summing to 1, but no sigmoid: ambiguous."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.drop = nn.Linear(F, 4), nn.Dropout(0.2)

    def forward(self, x):
        return torch.clamp(self.fc(self.drop(x)), 0.0, 1.0)


@pytest.mark.parametrize(
    ("model", "head", "error", "match"),
    [
        (bh01_net(), "multilabel", ConfigError, r"head='multilabel' \(logits\) contradicts"),
        (bh01_net(), "probs", ConfigError, r"head='probs' contradicts .* sigmoid over 5 columns"),
        (InlineSigmoid(False), "multilabel_probs", ConfigError, r"not probabilities\); pass"),
        (Clamped(), None, ConfigError, r"could be K independent label probabilities or logits"),
        (nn.Sequential(nn.Dropout(0.1), nn.Linear(F, 3), nn.LogSigmoid()), None,
         UnsupportedLayerError, r"log-sigmoid .* pass head='multilabel'"),
    ],
)  # fmt: skip
def test_multilabel_refusals_are_one_line(tmp_path, model, head, error, match):
    with pytest.raises(error, match=match) as info:
        export_model(model, example((F,)), tmp_path / "m.onnx", head=head)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


def test_ambiguous_output_exports_once_the_head_is_named(tmp_path):
    """The ambiguous clamp net: ``head='multilabel_probs'`` keeps the values per label,
    ``head='logits'`` is the user's categorical."""
    x = example((F,))
    a = export_model(Clamped(), x, tmp_path / "a.onnx", head="multilabel_probs", verify=False)
    b = export_model(Clamped(), x, tmp_path / "b.onnx", head="logits", verify=False)
    assert _meta(a.path)["qbnn.multilabel"] == "true"
    assert _meta(b.path)["qbnn.head"] == "logits"


def multilabel_logits() -> nn.Module:
    """CLI factory: K = 4 logits of an MC-dropout net."""
    return InlineSigmoid(False)


def test_cli_export_head_multilabel(tmp_path):
    """``qbnn export --head multilabel`` writes a multi-label graph."""
    from typer.testing import CliRunner

    from qbnn.pipeline.cli import app

    out = tmp_path / "m.onnx"
    args = ["export", "-m", "test_multilabel:multilabel_logits", "--input-shape", str(F)]
    res = CliRunner().invoke(app, [*args, "--head", "multilabel", "-o", str(out)])
    assert res.exit_code == 0, res.output
    meta = _meta(out)
    assert meta["qbnn.head"] == "multilabel" and meta["qbnn.multilabel"] == "true"
    res = CliRunner().invoke(app, [*args, "--head", "multilabels", "-o", str(tmp_path / "x.onnx")])
    assert res.exit_code != 0 and "multilabel" in res.output


def test_predictor_refuses_a_multilabel_flag_without_label_outputs(tmp_path):
    """A file that claims ``qbnn.multilabel`` but lacks the per-label outputs (hand-edited)
    is refused in one line instead of being read as one categorical."""
    from qbnn.runtimes.contract import ContractMeta
    from qbnn.runtimes.errors import ModelLoadError
    from qbnn.runtimes.loading import set_metadata

    x = example((F,))
    res = export_model(InlineSigmoid(False), x, tmp_path / "c.onnx", verify=False)
    model = onnx.load(str(res.path))
    set_metadata(model, ContractMeta(multilabel=True).to_props())
    onnx.save_model(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelLoadError, match=r"lacks the outputs \['label_predictive_entropy'"):
        Predictor(tmp_path / "bad.onnx")
