"""Regression on scikit-learn's bundled diabetes data, for every posterior family.

Each family is trained for real (tests/trainers.py), exported with a homoscedastic or
heteroscedastic head, quantized with INC, and the fp32/int8 pair is measured by ``validate``:
its regression metrics (RMSE, Gaussian NLL, PICP, mean variance) and the regression gates
(RMSE ratio <= 1.05, NLL increase <= 0.1 nats, total and epistemic variance ratios in
[0.8, 1.25]) must pass.

Thresholds: a predictor of the training mean has RMSE 1.0 here (standardized target); ordinary
least squares reaches 0.70 on this split, so RMSE < 0.9 means the network learned; the 95 %
interval must cover 80-100 % of the 100 test targets.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qbnn.exporters import WeightGaussian, export, export_model
from qbnn.pipeline.validate import ValidateConfig, validate
from qbnn.runtimes import Predictor
from qbnn.runtimes.errors import ConfigError

import trainers as T

VCFG = {"num_samples": 32, "bootstrap": 50, "mc_repeats": 1, "threads": 1}


@pytest.fixture(scope="module")
def dia():
    return T.diabetes()


FAMILIES = [
    "meanfield",
    "mcdropout",
    "ensemble",
    "swag",
    "sgld",
    "laplace-ll-kron",
    "laplace-all-diag",
]


@pytest.mark.parametrize("family", FAMILIES)
def test_homoscedastic_family_on_diabetes(tmp_path, dia, family):
    post, posterior, sampling = T.diabetes_posterior(family, dia, "mse")
    fp32, q = T.diabetes_fp32_int8(post, posterior, sampling, False, dia, tmp_path)
    int8 = q.path
    report = validate({"fp32": fp32, "int8": int8}, dia.npz_test(), config=ValidateConfig(**VCFG))
    m = {r.name: r.metrics for r in report.models}
    assert m["fp32"]["rmse"] < 0.9, m["fp32"]
    assert 0.8 <= m["fp32"]["picp@0.95"] <= 1.0, m["fp32"]
    gates = {g.name: g for g in report.gates["int8"]}
    for name in ("rmse_ratio", "gaussian_nll_increase", "variance_ratio", "epistemic_ratio"):
        assert gates[name].passed is True, gates[name].detail
    assert report.passed


@pytest.mark.parametrize("family", ["meanfield", "mcdropout", "ensemble", "swag", "sgld"])
def test_heteroscedastic_family_on_diabetes(tmp_path, dia, family):
    post, posterior, sampling = T.diabetes_posterior(family, dia, "hetero")
    fp32, q = T.diabetes_fp32_int8(post, posterior, sampling, True, dia, tmp_path)
    int8 = q.path
    out = Predictor(fp32, seed=0).predict(dia.x_test.numpy(), 32, return_samples=True)
    aleatoric = out.variance_samples.mean(0)
    np.testing.assert_allclose(out.pred_variance, aleatoric + out.samples.var(0), rtol=1e-4)
    assert float(aleatoric.mean()) > 0.1  # the head learned a real noise level
    report = validate({"fp32": fp32, "int8": int8}, dia.npz_test(), config=ValidateConfig(**VCFG))
    m = report.models[0].metrics
    assert m["rmse"] < 0.9 and 0.8 <= m["picp@0.95"] <= 1.0, m
    assert report.passed, [g.detail for g in report.gates["int8"] if g.passed is False]


def test_an_erased_posterior_fails_the_epistemic_gate(tmp_path, dia):
    """Negative control: the same Laplace head with its factors shrunk 1000x (what a quantizer
    rounding the posterior away would leave) and the same observation noise. The total variance
    barely moves (noise dominates), so only the epistemic ratio catches it."""
    from qbnn.exporters.families.laplace import to_weight_gaussian
    from qbnn.exporters.modules.vector import VectorGaussian

    la, _, _ = T.diabetes_posterior("laplace-ll-kron", dia)
    good = to_weight_gaussian(la)
    shrunk = tuple(
        type(t)(t.start, *(getattr(t, n) * (1e-3 if n in ("scale", "m") else 1.0)
                           for n in ("scale", "q1", "q2", "m") if hasattr(t, n)))
        for t in good.posterior.terms
    )  # fmt: skip
    erased = WeightGaussian(good.model, VectorGaussian(good.posterior.mean, shrunk),
                            last_layer=good.last_layer)  # fmt: skip
    nv = float(la.sigma_noise) ** 2
    ref = export(la, dia.x_test[:8], tmp_path / "ref.onnx", task="regression", seed=0)
    bad = export(erased, dia.x_test[:8], tmp_path / "bad.onnx", task="regression", seed=0,
                 noise_variance=nv, verify=False)  # fmt: skip
    report = validate({"fp32": ref, "erased": bad}, dia.npz_test(), config=ValidateConfig(**VCFG))
    gates = {g.name: g for g in report.gates["erased"]}
    assert gates["variance_ratio"].passed is True, gates["variance_ratio"].detail
    assert gates["epistemic_ratio"].passed is False and gates["epistemic_ratio"].value < 1e-3
    assert not report.passed


def test_laplace_has_no_heteroscedastic_head(tmp_path, dia):
    net = T.fit(T.mlp(10, 2), dia.x_train, torch.cat([dia.y_train, dia.y_train], 1))
    la = T.laplace(net, dia.x_train, torch.cat([dia.y_train, dia.y_train], 1), "regression",
                   "last_layer", "diag")  # fmt: skip
    with pytest.raises(ConfigError, match="homoscedastic Gaussian likelihood"):
        export_model(la, dia.x_test[:4], tmp_path / "h.onnx", task="regression",
                     heteroscedastic=True)  # fmt: skip


def test_noise_variance_errors(tmp_path, dia):
    net = T.fit(T.mlp(10, 1, dropout=0.1), dia.x_train, dia.y_train, steps=20)
    with pytest.raises(ConfigError, match="noise_variance applies to homoscedastic regression"):
        export(net, dia.x_test[:4], tmp_path / "n.onnx", noise_variance=0.3)
    with pytest.raises(ConfigError, match="noise_variance must be a finite number > 0"):
        export(net, dia.x_test[:4], tmp_path / "n.onnx", task="regression", noise_variance=-1.0)
