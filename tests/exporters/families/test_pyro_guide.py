"""Posteriors held by a Pyro mean-field guide (``AutoNormal``, as TyXe builds them) are read
into the ``gaussian`` family (issue 22, kind 2): a Pyro model whose sample sites are named after
a torch network's parameters (TyXe's convention), fitted with SVI on iris, converted with
:func:`from_pyro_guide` and exported.

Tolerance: S = 2000 graph samples (ONNX Runtime, seed 3) against 2000 draws of Pyro's own guide
pushed through the network (``pyro.set_rng_seed(11)``); every ``mean_probs`` element within
4.5 standard errors (+1e-4), mean spread within 15 %.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qbnn.exporters import export_model, from_pyro_guide
from qbnn.runtimes import Predictor
from qbnn.runtimes.errors import ConfigError

from trainers import iris

pyro = pytest.importorskip("pyro", reason="pyro-ppl (requirements/no-deps.txt)")
dist = pytest.importorskip("pyro.distributions")
from pyro.infer import SVI, Trace_ELBO  # noqa: E402
from pyro.infer.autoguide import AutoNormal  # noqa: E402

S = 2000


def _fit() -> tuple[nn.Module, AutoNormal, torch.Tensor]:
    """A 4-16-3 MLP's weights as Pyro sample sites, AutoNormal fitted 300 SVI steps (seed 0)."""
    data = iris()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    shapes = {n: p.shape for n, p in net.named_parameters()}

    def model(x, y=None):
        params = {
            n: pyro.sample(n, dist.Normal(0.0, 1.0).expand(s).to_event(len(s)))
            for n, s in shapes.items()
        }
        logits = torch.func.functional_call(net, params, (x,))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)

    guide = AutoNormal(model, init_scale=0.05)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    for _ in range(300):
        svi.step(data.x_train, data.y_train)
    return net, guide, data.x_test[:8]


def _pyro_mc(net: nn.Module, guide: AutoNormal, x: torch.Tensor) -> np.ndarray:
    """Pyro's own posterior predictive: S guide draws, the network per draw, softmaxed."""
    pyro.set_rng_seed(11)
    with torch.no_grad():
        outs = [torch.func.functional_call(net, guide(), (x,)).softmax(-1) for _ in range(S)]
    return torch.stack(outs).double().numpy()


def test_autonormal_guide_exports_and_matches_pyros_predictive(tmp_path):
    net, guide, x = _fit()
    post = from_pyro_guide(net, guide)
    assert post.param_names == ("0.weight", "0.bias", "2.weight", "2.bias")
    res = export_model(post, x, tmp_path / "p.onnx", seed=0)
    assert res.family == "gaussian" and res.fidelity is not None
    graph = Predictor(res.path, seed=3).predict(x.numpy(), S, return_samples=True)
    probs = graph.probs.astype(np.float64)
    ref = _pyro_mc(net, guide, x)
    se = np.sqrt((probs.var(0) + ref.var(0)) / S)
    assert np.all(np.abs(probs.mean(0) - ref.mean(0)) <= 4.5 * se + 1e-4)
    sp_g, sp_t = probs.std(0).mean(), ref.std(0).mean()
    assert sp_t > 1e-3 and abs(sp_g - sp_t) <= 0.15 * sp_t, (sp_g, sp_t)


def test_sites_must_name_the_networks_parameters():
    net, guide, _ = _fit()
    other = nn.Sequential(nn.Linear(4, 16))
    with pytest.raises(ConfigError, match="guide site '2.weight' is not a parameter of Sequential"):
        from_pyro_guide(other, guide)
    with pytest.raises(ConfigError, match="expected a fitted Pyro AutoNormal guide"):
        from_pyro_guide(net, object())
