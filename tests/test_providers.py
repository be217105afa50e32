"""Noise correctness on every available execution provider.

CI runs this file twice: in the main environment (CPU EP) and in a venv with
onnxruntime-openvino (OpenVINO EP). Statistical checks use fixed export seeds.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from qbnn.exporters import export
from qbnn.runtimes import Predictor, available_providers

from tiny_models import CASES, UnitNoise, example

PROVIDERS = available_providers()


@pytest.fixture(scope="module")
def noise_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("noise")
    x = np.ones((1, 1), dtype=np.float32)
    import torch

    return {
        mode: export(
            UnitNoise(),
            torch.from_numpy(x),
            d / f"{mode}.onnx",
            sampling=mode,
            task="regression",
            seed=11,
            verify=False,
        )
        for mode in ("weight", "lrt")
    }


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["weight", "lrt"])
def test_noise_is_standard_normal(noise_models, provider, mode):
    """64 x 1000 draws; KS test against N(0,1) at p > 1e-3, |mean| < 0.02, |std - 1| < 0.02
    (standard errors are 0.004 and 0.003)."""
    pred = Predictor(noise_models[mode], provider=provider, seed=3)
    res = pred.predict(np.ones((1, 1), np.float32), 1000, return_samples=True)
    z = res.samples.ravel().astype(np.float64)
    assert z.size == 64_000
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1.0) < 0.02
    # tails: Box-Muller must reach beyond 3 sigma at the normal rate (0.27%)
    assert 0.0015 < np.mean(np.abs(z) > 3) < 0.004


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", ["meanfield-mlp", "flipout-cnn", "mcdropout-mlp"])
def test_mc_means_agree_with_cpu(tmp_path, provider, case):
    """MC means over S=1500 on ``provider`` vs the CPU provider: every element within 5 SE."""
    factory, shape = CASES[case]
    path = export(factory(), example(shape), tmp_path / "m.onnx", seed=21, verify=False)
    x = example(shape, batch=3, seed=8).numpy()
    a = Predictor(path, provider=provider, seed=1).predict(x, 1500, return_samples=True)
    b = Predictor(path, provider="cpu", seed=2).predict(x, 1500, return_samples=True)
    se = np.sqrt((a.probs.var(0) + b.probs.var(0)) / 1500)
    assert np.all(np.abs(a.mean_probs - b.mean_probs) <= 5 * se + 1e-4)
    assert abs(a.probs.std(0).mean() - b.probs.std(0).mean()) < 0.1 * b.probs.std(0).mean()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("layout", ["tiled", "summed"])
def test_weight_posterior_draws_on_every_provider(tmp_path, provider, layout):
    """In-graph draws of a weight posterior (Kronecker + diagonal terms concatenated, or
    SWAG-style diagonal + low-rank terms summed) have the exact mean and covariance: 20,000
    draws, every entry within 5 standard errors."""
    import torch
    from torch import nn

    from qbnn.exporters import (
        DiagTerm,
        KronTerm,
        LowRankTerm,
        VectorGaussian,
        WeightGaussian,
    )

    from trainers import assert_moments, linear_readout

    g = torch.Generator().manual_seed(5)
    if layout == "tiled":
        q1 = torch.linalg.qr(torch.randn(2, 2, generator=g))[0]
        q2 = torch.linalg.qr(torch.randn(3, 3, generator=g))[0]
        m = torch.rand(2, 3, generator=g) * 0.3 + 0.05
        terms = (KronTerm(0, q1, q2, m), DiagTerm(6, torch.tensor([0.2, 0.05])))
    else:
        terms = (DiagTerm(0, torch.rand(8, generator=g) * 0.1),
                 LowRankTerm(0, torch.randn(4, 8, generator=g) * 0.2))  # fmt: skip
    post = VectorGaussian(torch.randn(8, generator=g), terms)
    path = export(WeightGaussian(nn.Sequential(nn.Linear(3, 2)), post), torch.zeros(4, 3),
                  tmp_path / "w.onnx", task="regression", verify=False)  # fmt: skip
    theta = linear_readout(path, 3, 20000, provider=provider)
    assert_moments(theta, post.mean.double().numpy(), post.covariance().numpy())
