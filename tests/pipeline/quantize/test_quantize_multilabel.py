"""int8 quantization of a multi-label graph (issue 22, kind 5): the per-label head survives.

The int8 graph keeps ``qbnn.multilabel`` and the per-label outputs; its per-label mean
probabilities stay within 0.05 of the fp32 graph's (S = 2000, same seed: MC error about 0.01)
and its rows still do not sum to 1. ``autotune`` (top-1 / one-categorical scores) is refused.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from qbnn.exporters import export
from qbnn.pipeline.quantize import AutotuneConfig, QuantConfig, quantize_model
from qbnn.runtimes import Predictor
from qbnn.runtimes.contract import LABEL_OUTPUTS
from qbnn.runtimes.errors import ConfigError


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4), nn.Sigmoid()
    )
    with torch.no_grad():
        net[3].bias.copy_(torch.tensor([2.5, -2.5, 1.0, 0.0]))
    return net.eval()


def test_multilabel_graph_quantizes(tmp_path):
    x = torch.randn(256, 10, generator=torch.Generator().manual_seed(0))
    src = export(_net(), x[:8], tmp_path / "ml.onnx", seed=0, verify=False)
    res = quantize_model(src, tmp_path / "ml8.onnx", QuantConfig(), calib=x.numpy())
    meta = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    assert meta["qbnn.precision"] == "int8" and meta["qbnn.multilabel"] == "true"
    xs = x[:16].numpy()
    fp32 = Predictor(src, seed=1).predict(xs, 2000)
    int8 = Predictor(res.path, seed=1).predict(xs, 2000)
    assert int8.multilabel and int8.mean_probs.shape == (16, 4)
    np.testing.assert_allclose(int8.mean_probs, fp32.mean_probs, atol=0.05)
    assert np.abs(int8.mean_probs.sum(1) - 1.0).min() > 0.1
    for name in LABEL_OUTPUTS:
        assert getattr(int8, name).shape == (16, 4)


def test_autotune_refused_for_multilabel(tmp_path):
    x = torch.randn(32, 10, generator=torch.Generator().manual_seed(0))
    src = export(_net(), x[:8], tmp_path / "ml.onnx", seed=0, verify=False)
    cfg = QuantConfig(autotune=AutotuneConfig(data=str(tmp_path / "val.npz")))
    with pytest.raises(ConfigError, match="does not fit the multi-label model"):
        quantize_model(src, tmp_path / "ml8.onnx", cfg, calib=x.numpy())
    assert not (tmp_path / "ml8.onnx").exists()
