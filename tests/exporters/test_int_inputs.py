"""Inputs that are not a float batch (issue 14, item 5).

A text classifier (embedding of int64 token ids -> dropout -> linear) exports with an int64
``input``; predict, validate, calibration and INC quantization take the ids as they are. MC
checks: the graph's per-sample probabilities vs the torch model's own MC samples (dropout on),
``S`` each side, within 5 standard errors + 1e-3 per element. A model whose first axis is not
the batch is refused with one sentence.
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
from qbnn.runtimes.errors import RuntimeInputError, UnsupportedLayerError

from tiny_models import ort_session

S = 1500
VOCAB, T = 50, 6


class TextClassifier(nn.Module):
    """The issue's text classifier: embedding of token ids -> dropout -> linear, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.drop = nn.Embedding(VOCAB, 8), nn.Dropout(0.3)
        self.fc = nn.Linear(T * 8, 3)

    def forward(self, ids):
        return self.fc(self.drop(self.emb(ids)).flatten(1))


class BagOfWords(nn.Module):
    """Designed here: ids -> EmbeddingBag (mean; torch exports it as an ONNX Loop whose body
    reads outer initializers) -> dropout -> two layers; a binary head of one logit per row."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.bag = nn.EmbeddingBag(VOCAB, 12, mode="mean")
        self.net = nn.Sequential(nn.Dropout(0.25), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, ids):
        return 4.0 * self.net(self.bag(ids))


class TimeMajor(nn.Module):
    """An LSTM without ``batch_first``: ``[B, T, F]`` in, ``[T, B, H]`` out."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.drop = nn.LSTM(4, 5), nn.Dropout(0.2)

    def forward(self, x):
        return self.drop(self.lstm(x)[0])


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, T), generator=torch.Generator().manual_seed(seed))


def _mc(model, x, s, seed=7) -> np.ndarray:
    net = mc_mode(model)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.stack([net(x) for _ in range(s)]).double().numpy()


def _close(graph: np.ndarray, ref: np.ndarray, z: float = 5.0) -> None:
    se = np.sqrt((graph.var(0) + ref.var(0)) / graph.shape[0])
    diff = np.abs(graph.mean(0) - ref.mean(0))
    assert (diff <= z * se + 1e-3).all(), f"max diff {diff.max():.4f}, se {se.max():.4f}"


def _graph_probs(path, x: torch.Tensor, s: int) -> np.ndarray:
    feed = {"input": x.numpy(), "num_samples": np.array(s, dtype=np.int64)}
    return ort_session(path).run(["probs"], feed)[0].astype(np.float64)


def _input_type(path) -> int:
    return onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("txt") / "text.onnx"
    return export_model(TextClassifier(), _ids(4, 0), path, seed=0).path


def test_text_classifier_exports_int64_ids(text_model):
    """Issue example: the ids were cast to float and the export blamed the model."""
    assert _input_type(text_model) == onnx.TensorProto.INT64
    x = _ids(5, 3)
    ref = torch.from_numpy(_mc(TextClassifier(), x, S)).softmax(-1).numpy()
    _close(_graph_probs(text_model, x, S), ref)


def test_predict_validate_quantize_take_ids(text_model, tmp_path):
    """Predictor, validate and INC quantization (calibration on ids) accept integer inputs;
    float input to an id model is one clear line."""
    from qbnn.pipeline.quantize import quantize_model
    from qbnn.pipeline.validate import ValidateConfig, validate

    x = _ids(48, 5).numpy()
    pred = Predictor(text_model, provider="cpu", seed=0)
    assert pred.info.input_dtype == "int64"
    out = pred.predict(x.astype(np.int32), 8)  # any integer dtype, cast to the model's
    assert out.mean_probs.shape == (48, 3)
    ov = Predictor(text_model, provider="openvino", seed=0).predict(x, 256)  # native OpenVINO
    assert np.abs(ov.mean_probs - pred.predict(x, 256).mean_probs).max() < 0.1
    with pytest.raises(RuntimeInputError, match=r"takes integer ids \(int64\); got float32"):
        pred.predict(x.astype(np.float32), 8)
    y = out.mean_probs.argmax(1)
    cfg = ValidateConfig(num_samples=8, seed=0, provider="cpu", bootstrap=20, mc_repeats=0)
    report = validate([text_model], {"x": x, "y": y}, config=cfg)
    assert report.models[0].metrics["accuracy"] == pytest.approx(1.0)
    q = quantize_model(text_model, tmp_path / "int8.onnx", calib=x)
    assert q.precision == "int8" and q.census.int8_ops
    int8 = Predictor(q.path, provider="cpu", seed=0).predict(x, 8)
    assert np.abs(int8.mean_probs - out.mean_probs).max() < 0.1


def test_bag_of_words_binary_head(tmp_path):
    """Designed here: ids into an EmbeddingBag, one logit per row (Bernoulli head). The Loop's
    initializers used to be pruned from the graph (invalid file)."""
    x = _ids(6, 11)
    path = export_model(BagOfWords(), x, tmp_path / "bow.onnx", seed=1).path
    assert _input_type(path) == onnx.TensorProto.INT64
    logits = _mc(BagOfWords(), x, S)[..., 0]
    _close(_graph_probs(path, x, S)[..., 1], 1.0 / (1.0 + np.exp(-logits)))


class BatchMean(nn.Module):
    """Reduces over the first axis: ``[B, F] -> [F]``."""

    def forward(self, x):
        return nn.functional.dropout(x, 0.2).mean(0)


def test_first_axis_not_a_batch_is_one_sentence(tmp_path):
    """A time-major LSTM given [T, B, F] (qbnn would tile and mix the time steps) and a model
    that reduces over the batch: one sentence each."""
    torch.manual_seed(0)
    x = torch.randn(4, 7, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(UnsupportedLayerError) as info:
        export_model(TimeMajor(), x, tmp_path / "m.onnx", task="regression")
    msg = str(info.value)
    assert msg.startswith(
        "the model's output for one example depends on the other rows of the batch (with the 4 "
        "input rows reversed its output rows change by up to "
    )
    assert msg.endswith(
        "qbnn needs the first axis of input and output to be the batch (one row per example); "
        "permute batch-second models (e.g. nn.LSTM without batch_first=True) in forward"
    )
    with pytest.raises(UnsupportedLayerError) as info:
        export_model(BatchMean(), x[:, 0, :3], tmp_path / "m.onnx", posterior="mcdropout",
                     task="regression")  # fmt: skip
    assert str(info.value) == (
        "the model maps an input of shape [4, 3] to shape [3]: qbnn needs the first axis of "
        "input and output to be the batch (one row per example); permute batch-second models "
        "(e.g. nn.LSTM without batch_first=True) in forward"
    )
    assert not (tmp_path / "m.onnx").exists()
