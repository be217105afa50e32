"""The model's output form is inspected, not assumed (issue 14, item 1).

Tiny seeded models shaped after the issue's failing examples: a classifier ending in
``nn.Softmax`` or ``F.log_softmax``, a regression net returning ``(mean, log_var)``, a
segmentation net returning ``[B, 3, 8, 8]``. Statistical checks compare the graph's MC mean with
the torch model's own MC average (dropout active) over ``S`` samples; the tolerance is stated
per test as a multiple of the MC standard error plus a small absolute slack.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qbnn.exporters import export_model
from qbnn.exporters.checks.outputform import detect_head, inspect_output, resolve_head
from qbnn.exporters.checks.selfcheck import verify_export
from qbnn.exporters.families.gaussian import WeightGaussian
from qbnn.exporters.modules.dropout import mc_mode
from qbnn.exporters.modules.heads import Head
from qbnn.exporters.modules.vector import DiagTerm, VectorGaussian
from qbnn.exporters.registry import get_exporter
from qbnn.runtimes.contract import NUM_SAMPLES, Task
from qbnn.runtimes.errors import ConfigError, UnsupportedLayerError, VerificationError

from tiny_models import BayesMLP, example, ort_session

S = 2000  # MC samples on both sides of every statistical comparison


class DropoutMLP(nn.Module):
    """The issue's MC-dropout MLP: 6 -> 32 -> dropout 0.3 -> 4, ending in ``end``.

    The last layer is scaled up so the predictive is confident (max probability near 0.9).
    """

    def __init__(self, end: str = "softmax", seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.drop, self.fc2 = nn.Linear(6, 32), nn.Dropout(0.3), nn.Linear(32, 4)
        with torch.no_grad():
            self.fc2.weight.mul_(6.0)
        self.end = end

    def forward(self, x):
        z = self.fc2(self.drop(torch.relu(self.fc1(x))))
        if self.end == "softmax":
            return nn.functional.softmax(z, dim=-1)
        if self.end == "log_softmax":
            return F.log_softmax(z, dim=-1)
        return z


class MeanLogVar(nn.Module):
    """Regression with a heteroscedastic head: ``(mean [B, 2], log_var [B, 2])``."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(5, 24), nn.ReLU(), nn.Dropout(0.2))
        self.mean, self.log_var = nn.Linear(24, 2), nn.Linear(24, 2)

    def forward(self, x):
        h = self.body(x)
        return self.mean(h), self.log_var(h) - 1.0


class TwoHeads(nn.Module):
    """A classifier that also returns its features: ``(logits [B, 3], features [B, 8])``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.drop, self.fc2 = nn.Linear(6, 8), nn.Dropout(0.2), nn.Linear(8, 3)

    def forward(self, x):
        h = self.drop(torch.relu(self.fc1(x)))
        return self.fc2(h), h


def _torch_mc(model: nn.Module, x: torch.Tensor, s: int, seed: int = 7) -> torch.Tensor:
    """The user's own MC inference: ``s`` forward passes with dropout on -> ``[S, B, ...]``."""
    net = mc_mode(model)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.stack([net(x) for _ in range(s)])


def _run(path, x: torch.Tensor, s: int, names: list[str]) -> dict[str, np.ndarray]:
    feed = {"input": x.numpy(), NUM_SAMPLES: np.array(s, dtype=np.int64)}
    return dict(zip(names, ort_session(path).run(names, feed), strict=True))


def _meta(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _within_mc_error(graph: np.ndarray, torch_s: np.ndarray, z: float = 5.0) -> None:
    """Graph MC mean vs torch MC mean, per element, within ``z`` standard errors + 1e-3."""
    se = np.sqrt((graph.var(0) + torch_s.var(0)) / graph.shape[0])
    diff = np.abs(graph.mean(0) - torch_s.mean(0))
    assert (diff <= z * se + 1e-3).all(), f"max diff {diff.max():.4f}, se {se.max():.4f}"


@pytest.mark.parametrize(
    ("end", "head"), [("softmax", "probs"), ("log_softmax", "log_probs"), ("logits", "logits")]
)
def test_classifier_head_detected_and_matches_torch(tmp_path, end, head):
    """Issue example: mean_probs max was 0.43 (softmax of probabilities) vs torch's 0.88."""
    model, x = DropoutMLP(end), example((6,), batch=8)
    res = export_model(model, x, tmp_path / "m.onnx", seed=3)
    assert _meta(res.path)["qbnn.head"] == head
    out = _run(res.path, x, S, ["probs", "mean_probs"])
    ref = _torch_mc(DropoutMLP(end), x, S)
    ref_probs = {"probs": ref, "log_probs": ref.exp(), "logits": ref.softmax(-1)}[head].numpy()
    _within_mc_error(out["probs"].astype(np.float64), ref_probs.astype(np.float64))
    # the symptom: the predictive stays confident, as torch's MC average is
    np.testing.assert_allclose(out["mean_probs"].max(-1), ref_probs.mean(0).max(-1), atol=0.03)
    assert ref_probs.mean(0).max() > 0.8
    np.testing.assert_allclose(out["mean_probs"].sum(-1), 1.0, atol=1e-5)


def test_explicit_head_that_agrees_is_accepted(tmp_path):
    res = export_model(DropoutMLP("softmax"), example((6,)), tmp_path / "m.onnx", head="probs")
    assert _meta(res.path)["qbnn.head"] == "probs"


@pytest.mark.parametrize(
    ("end", "head", "found"),
    [
        ("softmax", "logits", "probs"),  # the old silent double softmax
        ("logits", "probs", "logits"),
        ("log_softmax", "probs", "log_probs"),
        ("softmax", "log_probs", "probs"),
    ],
)
def test_contradicting_head_is_refused(tmp_path, end, head, found):
    with pytest.raises(ConfigError, match=rf"head='{head}' contradicts .* looks like {found}"):
        export_model(DropoutMLP(end), example((6,)), tmp_path / "m.onnx", head=head)
    assert not (tmp_path / "m.onnx").exists()


def test_head_option_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown head 'softmax'; valid heads: auto, logits"):
        export_model(DropoutMLP(), example((6,)), tmp_path / "m.onnx", head="softmax")
    with pytest.raises(ConfigError, match="head='probs' applies to task='classification' only"):
        export_model(
            MeanLogVar(), example((5,)), tmp_path / "m.onnx", task="regression", head="probs"
        )


def test_ensemble_of_softmax_members(tmp_path):
    """Exact mode: member probabilities are averaged as they are (no second softmax)."""
    members = [DropoutMLP("softmax", seed=i).eval() for i in range(3)]
    x = example((6,))
    res = export_model(members, x, tmp_path / "m.onnx", num_samples=3)
    assert _meta(res.path)["qbnn.head"] == "probs"
    out = _run(res.path, x, 3, ["mean_probs"])["mean_probs"]
    with torch.no_grad():
        ref = torch.stack([m(x) for m in members]).mean(0).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_self_check_catches_a_wrong_head(tmp_path):
    """The self-check converts the model's own outputs the documented way: a graph that treats
    probabilities as probabilities fails a check told the model returns logits."""
    model, x = DropoutMLP("softmax"), example((6,))
    res = export_model(model, x, tmp_path / "m.onnx", seed=1)
    built = get_exporter("mcdropout").build(
        model, get_exporter("mcdropout").parse_mode(None, 16), task=Task.CLASSIFICATION, seed=1
    )
    verify_export(res.path, built, x, Task.CLASSIFICATION, head=Head.PROBS)  # passes
    with pytest.raises(VerificationError, match="'probs' MC mean differs from the torch"):
        verify_export(res.path, built, x, Task.CLASSIFICATION, head=Head.LOGITS)


def test_mean_log_var_tuple_is_a_heteroscedastic_head(tmp_path):
    """Issue example: qbnn kept element 0 and dropped the aleatoric variance."""
    x = example((5,), batch=6)
    res = export_model(MeanLogVar(), x, tmp_path / "m.onnx", task="regression", seed=2)
    assert _meta(res.path)["qbnn.heteroscedastic"] == "true"
    names = ["mean", "variance", "pred_mean", "pred_variance"]
    out = {k: v.astype(np.float64) for k, v in _run(res.path, x, S, names).items()}
    ref = _torch_mc_pair(MeanLogVar(), x, S)
    mean, var = ref[0].numpy(), ref[1].exp().numpy()
    _within_mc_error(out["mean"], mean)
    _within_mc_error(out["variance"], var)
    total = var.mean(0) + mean.var(0)  # law of total variance of the torch MC draws
    np.testing.assert_allclose(out["pred_variance"], total, rtol=0.1)
    assert (out["pred_variance"] > mean.var(0) * 1.5).all()  # the aleatoric part is kept


def _torch_mc_pair(model, x, s, seed=7):
    net = mc_mode(model)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        pairs = [net(x) for _ in range(s)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def test_kl_tuple_keeps_element_zero():
    """Bayesian-Torch's (out, kl): a scalar second element is a KL term, not a head."""
    torch.manual_seed(0)
    for task in Task:
        form = inspect_output(BayesMLP(), example((6,)), task)
        assert form.shape == (4, 3) and not form.pair
        form = inspect_output(BayesMLP(), example((6,), batch=1), task)
        assert form.shape == (1, 3) and not form.pair


class BayesSoftmax(BayesMLP):
    """Bayesian-Torch MLP whose forward returns ``(softmax(out), kl)``."""

    def forward(self, x):
        out, kl = super().forward(x)
        return torch.softmax(8.0 * out, -1), kl


@pytest.mark.parametrize("mode", ["weight", "lrt", "frozen:4"])
def test_meanfield_probability_head_in_every_construction(tmp_path, mode):
    """Sample loop (weight), tiled (lrt) and unrolled (frozen) graphs apply the head alike;
    the self-check (on) compares each with the model's own MC probabilities."""
    torch.manual_seed(0)
    model, x = BayesSoftmax(), example((6,))
    res = export_model(model, x, tmp_path / "m.onnx", sampling=mode, num_samples=4, seed=5)
    assert _meta(res.path)["qbnn.head"] == "probs"
    n = 4 if mode.startswith("frozen") else S
    probs = _run(res.path, x, n, ["probs"])["probs"].astype(np.float64)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(7)
        ref = torch.stack([model(x)[0] for _ in range(S)]).double().numpy()
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # a second softmax over 3 classes caps every per-sample probability at e / (e + 2) = 0.58
    assert ref.max() > 0.9 and probs.max() > 0.9
    if n == S:
        _within_mc_error(probs, ref)


@pytest.mark.parametrize(
    ("model", "task", "match"),
    [
        (TwoHeads(), "classification", r"tuple of shapes \[\[4, 3\], \[4, 8\]\]: a classifier"),
        (TwoHeads(), "regression", r"a regression pair must be \(mean, log_var\) of the same"),
    ],
)
def test_unsupported_forms_refused_by_name(tmp_path, model, task, match):
    with pytest.raises(UnsupportedLayerError, match=match):
        export_model(model, example((6,)), tmp_path / "m.onnx", task=task)


def test_three_tuple_refused_one_column_accepted():
    x = example((6,))

    class Three(nn.Module):
        def forward(self, x):
            return x[:, :3], x[:, :3], x[:, :3]

    with pytest.raises(UnsupportedLayerError, match=r"tuple of shapes \[\[4, 3\], \[4, 3\], \[4"):
        inspect_output(Three(), x, Task.REGRESSION)
    # one column is a Bernoulli head now (tests/exporters/checks/test_heads_dense.py)
    assert inspect_output(nn.Linear(6, 1), x, Task.CLASSIFICATION).shape == (4, 1)


@pytest.mark.parametrize(
    ("end", "head"), [(nn.Softmax(-1), "probs"), (nn.LogSoftmax(-1), "log_probs")]
)
def test_last_layer_posterior_refuses_a_probability_head(tmp_path, end, head):
    """A last-layer posterior replaces the last Linear: a (log_)softmax after it would be lost
    (the issue's log_softmax MNIST net under last-layer Laplace agreed on 0 % of inputs)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), end)
    mean = torch.cat([model[2].weight.reshape(-1), model[2].bias]).detach()
    post = WeightGaussian(
        model, VectorGaussian(mean, (DiagTerm(0, torch.full((27,), 0.1)),)), last_layer="2"
    )
    with pytest.raises(ConfigError, match=f"outputs {head}, but a last-layer posterior"):
        export_model(post, example((6,)), tmp_path / "m.onnx")


class Temperature(nn.Module):
    def forward(self, z):
        return z / 2.0


@pytest.mark.parametrize("end", [Temperature(), nn.Identity()])
def test_last_layer_posterior_needs_the_last_linear_as_output(tmp_path, end):
    """Any op after the last Linear (here a temperature) would be dropped: refused by name;
    a network ending in that Linear exports (and its self-check passes)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), end)
    mean = torch.cat([model[2].weight.reshape(-1), model[2].bias]).detach()
    post = WeightGaussian(
        model, VectorGaussian(mean, (DiagTerm(0, torch.full((27,), 0.1)),)), last_layer="2"
    )
    if isinstance(end, nn.Identity):
        res = export_model(post, example((6,)), tmp_path / "m.onnx")
        assert _meta(res.path)["qbnn.head"] == "logits"
        return
    with pytest.raises(ConfigError, match=r"not the output of its last layer '2' \(relative"):
        export_model(post, example((6,)), tmp_path / "m.onnx")


def softmax_mlp() -> nn.Module:
    """CLI factory: the issue's MC-dropout MLP ending in softmax."""
    return DropoutMLP("softmax")


def test_cli_head_option(tmp_path):
    """``qbnn export --head``: detected by default, a contradiction exits 1 with one line."""
    from typer.testing import CliRunner

    from qbnn.pipeline.cli import app

    base = ["export", "-m", "test_heads:softmax_mlp", "--input-shape", "6", "--no-verify"]
    res = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "a.onnx")])
    assert res.exit_code == 0, res.output
    assert _meta(tmp_path / "a.onnx")["qbnn.head"] == "probs"
    res = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "b.onnx"), "--head", "logits"])
    assert res.exit_code == 1
    assert "contradicts the model's output" in res.output and "looks like probs" in res.output


def test_detect_head_rules():
    p = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    assert detect_head(p) == Head.PROBS
    assert detect_head(p.log()) == Head.LOG_PROBS
    assert detect_head(torch.tensor([[0.2, 0.7], [3.0, -1.0]])) == Head.LOGITS
    assert resolve_head(None, None, Task.CLASSIFICATION) == Head.LOGITS
