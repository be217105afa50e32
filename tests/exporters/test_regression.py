"""Regression heads: homoscedastic and heteroscedastic (mean, log-variance) graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from qbnn.exporters import export, export_model
from qbnn.pipeline.quantize import QuantConfig, quantize_model
from qbnn.runtimes import Predictor
from qbnn.runtimes.contract import HETEROSCEDASTIC_OUTPUTS, REGRESSION_OUTPUTS
from qbnn.runtimes.errors import ConfigError

from tiny_models import bayes_mlp, example, hetero_mlp


@pytest.mark.parametrize("mode", ["weight", "lrt", "frozen:4"])
def test_heteroscedastic_law_of_total_variance(tmp_path, mode):
    res = export_model(
        hetero_mlp(),
        example((6,)),
        tmp_path / "h.onnx",
        task="regression",
        heteroscedastic=True,
        sampling=mode,
    )
    model = onnx.load(str(res.path))
    assert [o.name for o in model.graph.output] == list(HETEROSCEDASTIC_OUTPUTS)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["qbnn.heteroscedastic"] == "true" and meta["qbnn.output_dim"] == "2"
    x = example((6,), batch=7, seed=3).numpy()
    out = Predictor(res.path, seed=0).predict(x, 50, return_samples=True)
    assert out.samples.shape == (50, 7, 2) and out.variance_samples.shape == (50, 7, 2)
    k = 4 if mode == "frozen:4" else 50  # exact modes: uniform over the K draws (issue 14)
    mean, var = out.samples[:k], out.variance_samples[:k]
    expected = var.mean(0) + mean.var(0)
    np.testing.assert_allclose(out.pred_variance, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.pred_mean, mean.mean(0), rtol=1e-5, atol=1e-6)
    assert np.all(out.pred_variance > mean.var(0))  # the aleatoric part is included


def test_homoscedastic_variance_is_the_spread(tmp_path):
    path = export(bayes_mlp(), example((6,)), tmp_path / "r.onnx", task="regression")
    assert [o.name for o in onnx.load(str(path)).graph.output] == list(REGRESSION_OUTPUTS)
    out = Predictor(path, seed=1).predict(example((6,)).numpy(), 40, return_samples=True)
    np.testing.assert_allclose(out.pred_variance, out.samples.var(0), rtol=1e-4, atol=1e-7)
    assert out.variance_samples is None


def test_heteroscedastic_chunks_match_one_run(tmp_path):
    from qbnn.runtimes import PredictorOptions

    path = export(
        hetero_mlp(),
        example((6,)),
        tmp_path / "h.onnx",
        task="regression",
        heteroscedastic=True,
        sampling="frozen:3",
        verify=False,
    )
    x = example((6,), batch=9).numpy()
    full = Predictor(path).predict(x, 3)
    parts = Predictor(path, options=PredictorOptions(max_rows=6)).predict(x, 3)
    np.testing.assert_allclose(parts.pred_variance, full.pred_variance, rtol=1e-5)


def test_heteroscedastic_quantizes(tmp_path):
    path = export(
        hetero_mlp(),
        example((6,)),
        tmp_path / "h.onnx",
        task="regression",
        heteroscedastic=True,
        sampling="lrt",
        verify=False,
    )
    calib = np.random.default_rng(0).standard_normal((64, 6)).astype(np.float32)
    res = quantize_model(path, tmp_path / "h8.onnx", QuantConfig(), calib=calib)
    out = Predictor(res.path, seed=0).predict(calib[:5], 16)
    assert out.pred_variance.shape == (5, 2) and np.all(out.pred_variance > 0)


@pytest.mark.parametrize(
    ("model", "task", "match"),
    [
        (hetero_mlp, "classification", "needs task='regression'"),
        (bayes_mlp, "regression", "even output size"),
    ],
)
def test_heteroscedastic_errors(tmp_path, model, task, match):
    with pytest.raises(ConfigError, match=match):
        export(model(), example((6,)), tmp_path / "h.onnx", task=task, heteroscedastic=True)
