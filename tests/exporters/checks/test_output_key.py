"""Dict and tuple outputs (issue 22, kind 5): a forward returning ``{"logits": ...}`` (Hugging
Face style) exports; several tensors need ``output_key=``; a bad key is one line listing the
keys, never "the model rejected an input".
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from qbnn.exporters import export_model
from qbnn.exporters.modules.dropout import mc_mode
from qbnn.pipeline.cli import app
from qbnn.runtimes import Predictor
from qbnn.runtimes.errors import ConfigError

S = 3000
X = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))


class DictNet(nn.Module):
    """MC-dropout classifier returning a dict; ``extra`` adds a second batch-shaped tensor."""

    def __init__(self, extra: bool = False, as_tuple: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(32, 4)
        self.extra, self.as_tuple = extra, as_tuple

    def forward(self, x):
        h = self.body(x)
        if self.as_tuple:
            return h, self.head(h)
        out = {"logits": self.head(h), "n_layers": 2}
        if self.extra:
            out["hidden"] = h
        return out


def dict_net() -> nn.Module:
    torch.manual_seed(0)
    return DictNet().eval()


def two_tensor_dict() -> nn.Module:
    torch.manual_seed(0)
    return DictNet(extra=True).eval()


def _mc_mean(net: nn.Module, pick) -> np.ndarray:
    m = mc_mode(net)
    torch.manual_seed(7)
    with torch.no_grad():
        probs = torch.stack([torch.softmax(pick(m(X)), -1) for _ in range(S)]).double()
    return probs.numpy()


def _check(path, ref: np.ndarray) -> None:
    """Graph mean_probs within 4.5 standard errors of torch's MC average (S = 3000 each)."""
    g = np.asarray(Predictor(path, seed=1).predict(X.numpy(), S, return_samples=True).probs)
    g = g.astype(np.float64)
    se = np.sqrt((g.var(0) + ref.var(0)) / S)
    assert np.all(np.abs(g.mean(0) - ref.mean(0)) <= 4.5 * se + 1e-6)


def test_a_dict_with_one_batch_tensor_exports_its_logits(tmp_path):
    res = export_model(dict_net(), X, tmp_path / "d.onnx", seed=0)
    assert res.family == "mcdropout"
    _check(res.path, _mc_mean(dict_net(), lambda o: o["logits"]))


def test_output_key_picks_one_of_several_tensors(tmp_path):
    res = export_model(two_tensor_dict(), X, tmp_path / "d.onnx", seed=0, output_key="logits")
    _check(res.path, _mc_mean(two_tensor_dict(), lambda o: o["logits"]))


def test_output_key_indexes_a_tuple(tmp_path):
    torch.manual_seed(0)
    net = DictNet(as_tuple=True).eval()
    res = export_model(net, X, tmp_path / "t.onnx", seed=0, output_key=1)
    torch.manual_seed(0)
    _check(res.path, _mc_mean(DictNet(as_tuple=True).eval(), lambda o: o[1]))


def test_several_tensors_without_output_key_is_one_line_naming_the_keys(tmp_path):
    msg = (
        "the model returns a dict with 2 batch-shaped tensors (logits [6, 4], n_layers (int), "
        "hidden [6, 32]); pass output_key='<key>' naming the prediction (keys: logits, "
        "n_layers, hidden)"
    )
    with pytest.raises(ConfigError) as err:
        export_model(two_tensor_dict(), X, tmp_path / "d.onnx")
    assert str(err.value) == msg
    assert not (tmp_path / "d.onnx").exists()


def test_an_unknown_output_key_lists_the_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        export_model(dict_net(), X, tmp_path / "d.onnx", output_key="logit")
    assert str(err.value) == (
        "output_key 'logit' is not a key of the model's output dict; its keys: logits, n_layers"
    )


def test_a_bad_tuple_index_is_refused(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match=r"^output_key '2' is not an index of the model's "):
        export_model(DictNet(as_tuple=True).eval(), X, tmp_path / "t.onnx", output_key="2")


def test_output_key_on_a_tensor_output_is_refused(tmp_path):
    net = nn.Sequential(nn.Linear(10, 4), nn.Dropout(0.2))
    with pytest.raises(ConfigError, match="was given but the model returns a Tensor"):
        export_model(net, X, tmp_path / "t.onnx", output_key="logits")


def test_cli_output_key(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    out = tmp_path / "d.onnx"
    base = ["export", "-m", "test_output_key:two_tensor_dict", "--input-shape", "10", "-o"]
    res = CliRunner().invoke(app, [*base, str(out)])
    assert res.exit_code == 1
    assert "pass --output-key <key> naming the prediction" in res.output
    res = CliRunner().invoke(app, [*base, str(out), "--output-key", "logits", "--seed", "0"])
    assert res.exit_code == 0, res.output
    assert out.exists()
