"""Bernoulli heads (one logit or one probability) and dense prediction ``[B, C, *spatial]``
(issue 14, item 1).

Statistical checks compare the graph's per-sample outputs with the torch model's own MC
samples (dropout active), ``S`` draws each side, per element within 5 standard errors + 1e-3;
exact (ensemble) checks use the members' outputs directly (atol 1e-5).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from qbnn.exporters import export_model
from qbnn.exporters.checks.outputform import detect_head
from qbnn.exporters.modules.dropout import mc_mode
from qbnn.exporters.modules.heads import Head
from qbnn.runtimes import Predictor
from qbnn.runtimes.errors import ConfigError, RuntimeInputError

from tiny_models import SegNet, example, ort_session

S = 1500


class Diagnosis(nn.Module):
    """A diagnosis MLP: 6 features -> 16 -> dropout 0.3 -> 1, ending in ``end``."""

    def __init__(self, end: str = "sigmoid", seed: int = 1) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
        self.end, self.sig = end, nn.Sigmoid()

    def forward(self, x):
        z = 3.0 * self.body(x)
        if self.end == "sigmoid":
            return self.sig(z)  # nn.Sigmoid module: detected as probabilities
        if self.end == "inline":
            return torch.sigmoid(z)  # torch.sigmoid, no module: detected as probabilities too
        if self.end == "tanh":
            return (torch.tanh(z) + 1.0) / 2.0  # values in [0, 1], nothing says probabilities
        return z.squeeze(-1)  # one logit per row, shape [B] (BCEWithLogitsLoss style)


class BinarySeg(nn.Module):
    """Binary segmentation: conv -> 1x1 conv to one channel -> nn.Sigmoid, ``[B, 1, 6, 6]``."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1))
        self.sig = nn.Sigmoid()

    def forward(self, x):
        return self.sig(2.0 * self.net(x))


def _mc(model: nn.Module, x: torch.Tensor, s: int, seed: int = 7) -> np.ndarray:
    net = mc_mode(model)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.stack([net(x) for _ in range(s)]).double().numpy()


def _run(path, x, s, names):
    feed = {"input": x.numpy(), "num_samples": np.array(s, dtype=np.int64)}
    outs = ort_session(path).run(names, feed)
    return {k: v.astype(np.float64) for k, v in zip(names, outs, strict=True)}


def _meta(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _close(graph: np.ndarray, ref: np.ndarray, z: float = 5.0) -> None:
    se = np.sqrt((graph.var(0) + ref.var(0)) / graph.shape[0])
    diff = np.abs(graph.mean(0) - ref.mean(0))
    assert (diff <= z * se + 1e-3).all(), f"max diff {diff.max():.4f}, se {se.max():.4f}"


def _cfg():
    from qbnn.pipeline.validate import ValidateConfig

    return ValidateConfig(num_samples=16, seed=0, provider="cpu", bootstrap=20, mc_repeats=0)


def _h(p: np.ndarray, axis: int) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis)


NAMES = ["probs", "mean_probs", "predictive_entropy", "expected_entropy", "mutual_information"]


@pytest.mark.parametrize(("end", "head"), [("sigmoid", "probs"), ("logit", "logits")])
def test_bernoulli_head_matches_torch(tmp_path, end, head):
    """One probability (nn.Sigmoid) or one logit per row -> two classes [1 - p, p]; entropy and
    MI are those of the Bernoulli predictive of the torch model's own MC samples."""
    x = example((6,), batch=6)
    res = export_model(Diagnosis(end), x, tmp_path / "m.onnx", seed=3)
    meta = _meta(res.path)
    assert (meta["qbnn.head"], meta["qbnn.num_classes"], meta["qbnn.output_shape"]) == (
        head, "2", "1",
    )  # fmt: skip
    out = _run(res.path, x, S, NAMES)
    ref = _mc(Diagnosis(end), x, S).reshape(S, len(x))
    p = ref if head == "probs" else 1.0 / (1.0 + np.exp(-ref))  # torch's P(y = 1) per sample
    assert out["probs"].shape == (S, 6, 2) and out["mean_probs"].shape == (6, 2)
    _close(out["probs"][..., 1], p)
    np.testing.assert_allclose(out["probs"].sum(-1), 1.0, atol=1e-6)
    pbar = p.mean(0)
    bern = -(pbar * np.log(pbar) + (1 - pbar) * np.log(1 - pbar))
    np.testing.assert_allclose(out["predictive_entropy"], bern, atol=0.02)
    ee = -(p * np.log(p) + (1 - p) * np.log(1 - p)).mean(0)
    np.testing.assert_allclose(out["mutual_information"], bern - ee, atol=0.01)
    assert out["mutual_information"].max() > 0.02  # dropout gives real epistemic spread


def test_ambiguous_one_column_needs_head(tmp_path):
    """Values in [0, 1] from no sigmoid fit logits and probabilities: one clear refusal, then
    head='probs' exports (self-check against the model's own samples on). An inline
    ``torch.sigmoid`` is detected as probabilities (issue 22)."""
    x = example((6,))
    res = export_model(Diagnosis("inline"), x, tmp_path / "i.onnx", seed=1)
    assert _meta(res.path)["qbnn.head"] == "probs"
    with pytest.raises(ConfigError) as info:
        export_model(Diagnosis("tanh"), x, tmp_path / "m.onnx")
    assert str(info.value) == (
        "the binary classifier's one output per row lies in [0, 1] on the example input, so it "
        "could be logits or probs (a sigmoid probability); pass head='logits' or head='probs' "
        "(--head) to say which"
    )
    res = export_model(Diagnosis("tanh"), x, tmp_path / "m.onnx", head="probs", seed=1)
    assert _meta(res.path)["qbnn.head"] == "probs"
    with pytest.raises(ConfigError, match=r"head='probs' contradicts the binary classifier's"):
        export_model(Diagnosis("logit"), x, tmp_path / "n.onnx", head="probs")


def test_detect_head_one_column_rules():
    assert detect_head(torch.tensor([[0.3], [2.0]])) == Head.LOGITS
    assert detect_head(torch.tensor([0.3, -2.0])) == Head.LOGITS
    assert detect_head(torch.tensor([[0.3], [0.9]]), end="Sigmoid") == Head.PROBS
    assert detect_head(torch.tensor([[-0.3], [-0.9]]), end="LogSigmoid") == Head.LOG_PROBS
    with pytest.raises(ConfigError, match=r"lies in \(-inf, 0\] .* head='log_probs'"):
        detect_head(torch.tensor([[-0.3], [-0.9]]))


def test_bernoulli_predict_and_validate(tmp_path):
    """predict and validate take a Bernoulli graph like any two-class classifier."""
    from qbnn.pipeline.validate import validate

    x = example((6,), batch=40, seed=5)
    path = export_model(Diagnosis("sigmoid"), x[:4], tmp_path / "m.onnx", seed=0).path
    pred = Predictor(path, provider="cpu", seed=0).predict(x.numpy(), 16)
    y = (pred.mean_probs[:, 1] > 0.5).astype(np.int64)
    y[:5] = 1 - y[:5]  # five wrong labels: accuracy 35 / 40
    report = validate([path], {"x": x.numpy(), "y": y}, config=_cfg())
    assert report.models[0].metrics["accuracy"] == pytest.approx(35 / 40)


def test_segmentation_softmax_over_the_class_axis(tmp_path):
    """Issue example: the graph softmaxed all 192 values of a row as if they were classes."""
    x = example((1, 8, 8), batch=3)
    res = export_model(SegNet(), x, tmp_path / "seg.onnx", seed=2)
    assert _meta(res.path)["qbnn.output_shape"] == "3,8,8"
    assert _meta(res.path)["qbnn.num_classes"] == "3"
    out = _run(res.path, x, S, NAMES)
    assert out["probs"].shape == (S, 3, 3, 8, 8) and out["mean_probs"].shape == (3, 3, 8, 8)
    assert out["predictive_entropy"].shape == (3, 8, 8)
    assert out["mutual_information"].shape == (3, 8, 8)
    ref = torch.from_numpy(_mc(SegNet(), x, S)).softmax(2).numpy()  # class axis only
    _close(out["probs"], ref)
    np.testing.assert_allclose(out["mean_probs"].sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["predictive_entropy"], _h(ref.mean(0), 1), atol=0.02)
    mi = _h(ref.mean(0), 1) - _h(ref, 2).mean(0)
    np.testing.assert_allclose(out["mutual_information"], mi, atol=0.01)
    assert out["mutual_information"].max() > 0.01


def test_binary_segmentation_ensemble_exact(tmp_path):
    """A dense Bernoulli head under an exact posterior: per-pixel mean of the members."""
    members = [BinarySeg(seed) for seed in range(3)]
    x = example((1, 6, 6), batch=2)
    res = export_model(members, x, tmp_path / "bseg.onnx")
    out = _run(res.path, x, 3, NAMES)
    with torch.no_grad():
        p = torch.stack([m(x) for m in members]).double().numpy()[:, :, 0]  # [K, B, 6, 6]
    assert out["mean_probs"].shape == (2, 2, 6, 6)
    np.testing.assert_allclose(out["mean_probs"][:, 1], p.mean(0), atol=1e-5)
    np.testing.assert_allclose(out["mean_probs"][:, 0], 1 - p.mean(0), atol=1e-5)
    pbar = p.mean(0)
    h = -(pbar * np.log(pbar) + (1 - pbar) * np.log(1 - pbar))
    np.testing.assert_allclose(out["predictive_entropy"], h, atol=1e-5)


def test_dense_validate_at_pixel_level(tmp_path):
    """validate flattens pixels to rows: pixel accuracy / NLL from the shared metric code,
    uncertainty-map PNGs; labels of the wrong shape get one clear line."""
    from qbnn.pipeline.validate import validate, write_report

    x = example((1, 8, 8), batch=6, seed=9)
    path = export_model(SegNet(), x[:3], tmp_path / "seg.onnx", seed=4).path
    pred = Predictor(path, provider="cpu", seed=0).predict(x.numpy(), 16)
    y = pred.mean_probs.argmax(1)  # [6, 8, 8]
    y[0, :2] = (y[0, :2] + 1) % 3  # 16 wrong pixels of 384
    report = validate([path], {"x": x.numpy(), "y": y}, config=_cfg())
    m = report.models[0].metrics
    assert m["accuracy"] == pytest.approx(1 - 16 / 384)
    p_true = np.take_along_axis(pred.mean_probs, y[:, None], 1)[:, 0]
    assert m["nll"] == pytest.approx(float(-np.log(np.clip(p_true, 1e-12, None)).mean()), 1e-4)
    assert report.sample_counts["n"] == 6 and any("384 pixels" in n for n in report.notes)
    written = write_report(report, tmp_path / "rep")
    assert (tmp_path / "rep" / "uncertainty_maps.png").stat().st_size > 1000
    assert "uncertainty_maps.png" in " ".join(written.plots)
    with pytest.raises(RuntimeInputError) as info:
        validate([path], {"x": x.numpy(), "y": y[:, :4]}, config=_cfg())
    assert "labels 'y' must be class maps [N, 8, 8]; got [6, 4, 8]" in str(info.value)
