"""Third-party Bayes-by-backprop layers whose forward has side effects (issue 22, kind 2).

torch-uncertainty 0.13 ``BayesLinear`` / ``BayesConv2d`` write ``log_prior`` /
``log_variational_posterior`` in forward (export was refused: "HOP: Unsafe side effect"); blitz
0.2.8 ``BayesianLinear`` / ``BayesianConv2d`` fill ``eps_w`` in place with ``normal_()`` (export
was refused naming the buffer). Each model is built and trained the way its library documents,
exported with ``posterior="auto"`` and compared with the library's own MC average.

Tolerances: S = 1000 graph samples (ONNX Runtime, seed 3) against S = 1000 forwards of the
library model (torch seed 11); every ``mean_probs`` element within 4.5 standard errors of the
difference of the two MC means (+1e-4), mean spread (std over samples) within 15 %.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qbnn.exporters import export_model
from qbnn.runtimes import Predictor

from thirdparty import torch_uncertainty
from trainers import digits_flat, fit_minibatch

pytest.importorskip("blitz", reason="blitz-bayesian-pytorch (requirements/no-deps.txt)")
if importlib.util.find_spec("torch_uncertainty") is None:
    pytest.skip("torch-uncertainty (requirements/no-deps.txt)", allow_module_level=True)

S = 1000


def _tu_bayesian():
    """torch-uncertainty's Bayesian layers ``(BayesLinear, BayesConv2d)``."""
    bayesian = torch_uncertainty("layers.bayesian")
    return bayesian.BayesLinear, bayesian.BayesConv2d


def _train(model: nn.Module, loss_fn, epochs: int = 3) -> nn.Module:
    x, y = digits_flat(1400)
    return fit_minibatch(model, x, y, loss_fn, epochs=epochs, lr=5e-3, seed=0)


def tu_mlp() -> nn.Module:
    """torch-uncertainty's BayesLinear MLP 64-32-10, trained 3 epochs with its ELBO (cross
    entropy + KL weight 1/1400 times sum of log q - log prior, as its ``ELBOLoss`` computes)."""
    BayesLinear, _ = _tu_bayesian()
    torch.manual_seed(0)
    model = nn.Sequential(BayesLinear(64, 32), nn.ReLU(), BayesLinear(32, 10))

    def elbo(m, xb, yb):
        out = F.cross_entropy(m(xb), yb)
        kl = sum(b.log_variational_posterior - b.log_prior for b in m if hasattr(b, "log_prior"))
        return out + kl / 1400

    return _train(model, elbo)


def tu_cnn() -> nn.Module:
    """BayesConv2d (1->4, 3x3) + BayesLinear on 8x8 images, untrained, sigma ~ 0.13."""
    BayesLinear, BayesConv2d = _tu_bayesian()
    torch.manual_seed(0)
    return nn.Sequential(
        BayesConv2d(1, 4, 3, sigma_init=-2.0),
        nn.ReLU(),
        nn.Flatten(),
        BayesLinear(4 * 6 * 6, 10, sigma_init=-2.0),
    ).eval()


def blitz_mlp() -> nn.Module:
    """blitz's README model: a ``@variational_estimator`` MLP of BayesianLinear layers, trained
    3 epochs with ``sample_elbo``."""
    from blitz.modules import BayesianLinear
    from blitz.utils import variational_estimator

    @variational_estimator
    class BlitzMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blinear1 = BayesianLinear(64, 32)
            self.blinear2 = BayesianLinear(32, 10)

        def forward(self, x):
            return self.blinear2(F.relu(self.blinear1(x)))

    torch.manual_seed(0)
    crit = nn.CrossEntropyLoss()
    return _train(
        BlitzMLP(),
        lambda m, xb, yb: m.sample_elbo(
            inputs=xb, labels=yb, criterion=crit, sample_nbr=1, complexity_cost_weight=1 / 1400
        ),
    )


def blitz_cnn() -> nn.Module:
    """BayesianConv2d (1->4, 3x3) + BayesianLinear on 8x8 images, untrained, rho -2."""
    from blitz.modules import BayesianConv2d, BayesianLinear

    torch.manual_seed(0)
    return nn.Sequential(
        BayesianConv2d(1, 4, (3, 3), posterior_rho_init=-2.0),
        nn.ReLU(),
        nn.Flatten(),
        BayesianLinear(4 * 6 * 6, 10, posterior_rho_init=-2.0),
    ).eval()


CASES = {
    "tu-bayeslinear-mlp": (tu_mlp, (64,), "attribute writes dropped"),
    "tu-bayesconv2d-cnn": (tu_cnn, (1, 8, 8), "attribute writes dropped"),
    "blitz-bayesianlinear-mlp": (blitz_mlp, (64,), "weight_sampler.eps_w (normal_)"),
    "blitz-bayesianconv2d-cnn": (blitz_cnn, (1, 8, 8), "weight_sampler.eps_w (normal_)"),
}


def _library_mc(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The library's own sampler: S forwards of the model as its users run MC inference."""
    torch.manual_seed(11)
    with torch.no_grad():
        return torch.stack([torch.softmax(model(x), -1) for _ in range(S)]).double().numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_exports_and_matches_the_librarys_mc_average(case, tmp_path):
    factory, shape, note = CASES[case]
    model = factory()
    x, _ = digits_flat(8) if shape == (64,) else (digits_flat(8)[0].reshape(8, 1, 8, 8), None)
    res = export_model(model, x, tmp_path / "m.onnx", seed=0)
    assert res.family == "stochastic" and res.fidelity is not None
    assert note in " ".join(res.notes)
    graph = Predictor(res.path, seed=3).predict(x.numpy(), S, return_samples=True)
    probs = graph.probs.astype(np.float64)
    ref = _library_mc(model, x)
    se = np.sqrt((probs.var(0) + ref.var(0)) / S)
    z = np.abs(probs.mean(0) - ref.mean(0)) / np.maximum(se, 1e-12)
    assert np.all(np.abs(probs.mean(0) - ref.mean(0)) <= 4.5 * se + 1e-4), z.max()
    sp_g, sp_t = probs.std(0).mean(), ref.std(0).mean()
    assert sp_t > 1e-4 and abs(sp_g - sp_t) <= 0.15 * sp_t, (sp_g, sp_t)  # trained: small
    # the library's model is untouched by the export: its forward still samples
    assert not torch.equal(model(x), model(x))
