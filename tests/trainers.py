"""Real, small training runs on scikit-learn's bundled data (no downloads), one per trainer.

Every function seeds torch itself. Data: diabetes (442 x 10 regression, standardized, target in
standard units) and iris (150 x 4, 3 classes). Trainers: MAP (Adam), Bayesian-Torch mean-field
(ELBO), MC dropout, deep ensembles, laplace-torch on a MAP network, SWAG moments from constant-LR
SGD iterates, SGLD samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from bayesian_torch.models.dnn_to_bnn import dnn_to_bnn, get_kl_loss
from sklearn.datasets import load_diabetes, load_iris
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from qbnn.runtimes import Predictor, PredictorOptions


@dataclass(frozen=True)
class Split:
    """``x_*`` float32 ``[N, F]``; ``y_*`` float32 ``[N, 1]`` (regression) or int64 ``[N]``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def npz_test(self) -> dict[str, np.ndarray]:
        return {"x": self.x_test.numpy(), "y": self.y_test.numpy()}


def _standardize(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    return (x - train.mean(0)) / train.std(0)


def diabetes(n_test: int = 100) -> Split:
    """Diabetes regression, shuffled with seed 0; features and target standardized on train."""
    d = load_diabetes()
    idx = np.random.default_rng(0).permutation(len(d.target))
    x, y = d.data[idx], d.target[idx, None]
    tr = slice(n_test, None)
    xs, ys = _standardize(x, x[tr]), _standardize(y, y[tr])
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return Split(t(xs[n_test:]), t(ys[n_test:]), t(xs[:n_test]), t(ys[:n_test]))


def iris() -> Split:
    """Iris, 110 train / 40 test, standardized."""
    d = load_iris()
    idx = np.random.default_rng(0).permutation(len(d.target))
    x, y = d.data[idx], d.target[idx]
    xs = _standardize(x, x[40:])
    tx = torch.tensor(xs, dtype=torch.float32)
    ty = torch.tensor(y, dtype=torch.long)
    return Split(tx[40:], ty[40:], tx[:40], ty[:40])


def mlp(d_in: int, d_out: int, hidden: int = 16, dropout: float = 0.0, seed: int = 0):
    """``Linear -> Tanh (-> Dropout) -> Linear``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(d_in, hidden), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, d_out))
    return nn.Sequential(*layers)


def hetero_nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gaussian NLL of ``out = [mean, log-variance]`` (up to a constant)."""
    d = out.shape[-1] // 2
    mean, logvar = out[..., :d], out[..., d:]
    return 0.5 * (logvar + (y - mean) ** 2 / logvar.exp()).mean()


def _loss(kind: str):
    return {"mse": F.mse_loss, "ce": F.cross_entropy, "hetero": hetero_nll}[kind]


def fit(model: nn.Module, x, y, loss: str = "mse", steps: int = 100, lr: float = 1e-2, seed=0):
    """Full-batch Adam with weight decay 1e-4, stopped early (100 steps: longer overfits the
    342 diabetes rows); returns ``model`` in eval mode."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    fn = _loss(loss)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        fn(model(x), y).backward()
        opt.step()
    return model.eval()


def meanfield(d_in: int, d_out: int, x, y, loss: str = "mse", steps: int = 200) -> nn.Module:
    """Bayesian-Torch ``dnn_to_bnn`` MLP trained on the ELBO (data loss + KL / N)."""
    net = mlp(d_in, d_out)
    dnn_to_bnn(
        net,
        {
            "prior_mu": 0.0,
            "prior_sigma": 1.0,
            "posterior_mu_init": 0.0,
            "posterior_rho_init": -4.0,
            "type": "Reparameterization",
            "moped_enable": False,
            "moped_delta": 0.5,
        },
    )
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    fn = _loss(loss)
    for _ in range(steps):
        opt.zero_grad()
        (fn(net(x), y) + get_kl_loss(net) / len(x)).backward()
        opt.step()
    return net.eval()


def ensemble(d_in: int, d_out: int, x, y, k: int = 4, loss: str = "mse") -> list[nn.Module]:
    """K independently initialised MAP networks."""
    return [fit(mlp(d_in, d_out, seed=i), x, y, loss) for i in range(k)]


def laplace(model: nn.Module, x, y, likelihood: str, subset: str, structure: str, **kw):
    """A fitted laplace-torch posterior around the MAP ``model``; regression sets
    ``sigma_noise`` to the MAP's training residual std."""
    from laplace import Laplace

    if likelihood == "regression" and "sigma_noise" not in kw:
        with torch.no_grad():
            kw["sigma_noise"] = float((model(x) - y).std())
    la = Laplace(model, likelihood, subset_of_weights=subset, hessian_structure=structure, **kw)
    la.fit(DataLoader(TensorDataset(x, y), batch_size=64))
    return la


def sgd_iterates(model: nn.Module, x, y, *, epochs=60, keep=30, lr=0.02, loss="mse", seed=0):
    """Constant-LR minibatch SGD (momentum 0.9), one state dict per epoch for the last
    ``keep`` epochs: the snapshots SWAG collects."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    fn = _loss(loss)
    snaps = []
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            fn(model(x[idx]), y[idx]).backward()
            opt.step()
        if epoch >= epochs - keep:
            snaps.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return snaps


def sgld(model: nn.Module, x, y, *, n=16, burn=1500, thin=50, lr=2e-5, loss="mse", seed=0):
    """Stochastic-gradient Langevin dynamics (Welling & Teh, 2011) on the full-data posterior
    with a N(0, 1) prior and unit-variance Gaussian likelihood; ``n`` thinned state dicts."""
    torch.manual_seed(seed)
    fn = _loss(loss)
    big_n = len(x)
    states = []
    for it in range(burn + n * thin):
        idx = torch.randint(0, big_n, (32,))
        model.zero_grad()
        nll = big_n * fn(model(x[idx]), y[idx])
        prior = sum((p**2).sum() for p in model.parameters()) / 2
        (nll + prior).backward()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(-0.5 * lr * p.grad + lr**0.5 * torch.randn_like(p))
        if it >= burn and (it - burn) % thin == thin - 1:
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return states


def iris_laplace_factory():
    """CLI factory (``trainers:iris_laplace_factory``): last-layer Kronecker Laplace on iris."""
    d = iris()
    net = fit(mlp(4, 3), d.x_train, d.y_train, "ce", steps=300)
    return laplace(net, d.x_train, d.y_train, "classification", "last_layer", "kron")


def diabetes_posterior(family: str, dia: Split, loss: str = "mse"):
    """``(posterior, family name, sampling)`` of one trainer fitted on diabetes.

    ``family``: meanfield, mcdropout, ensemble, swag, sgld, laplace-ll-kron, laplace-ll-full,
    laplace-all-diag; ``loss="hetero"`` trains a ``[mean, log-variance]`` head (not Laplace).
    """
    x, y = dia.x_train, dia.y_train
    d_out = 2 if loss == "hetero" else 1
    if family == "meanfield":
        return meanfield(10, d_out, x, y, loss), "meanfield", "lrt"
    if family == "mcdropout":
        return fit(mlp(10, d_out, dropout=0.1), x, y, loss), "mcdropout", None
    if family == "ensemble":
        return ensemble(10, d_out, x, y, k=4, loss=loss), "ensemble", None
    if family == "swag":
        from qbnn.exporters import SwagPosterior

        net = mlp(10, d_out)
        snaps = sgd_iterates(net, x, y, epochs=20, keep=10, lr=0.01, loss=loss)
        return SwagPosterior.from_snapshots(net, snaps, rank=10), "swag", None
    if family == "sgld":
        from qbnn.exporters import WeightSamples

        net = mlp(10, d_out)
        return WeightSamples(net, sgld(net, x, y, n=8, loss=loss)), "ensemble", None
    subset, structure = {"laplace-ll-kron": ("last_layer", "kron"),
                         "laplace-ll-full": ("last_layer", "full"),
                         "laplace-all-diag": ("all", "diag")}[family]  # fmt: skip
    la = laplace(fit(mlp(10, 1), x, y), x, y, "regression", subset, structure)
    la.optimize_prior_precision(method="marglik")
    return la, "laplace", None


def linear_readout(path, d_in: int, s: int, provider: str = "cpu") -> np.ndarray:
    """theta [S, out*in + out] of a single-Linear regression graph (parameters_to_vector
    order), read from its per-sample outputs at x = 0 (bias) and x = e_j (column j + bias)."""
    x = np.vstack([np.zeros(d_in), np.eye(d_in)]).astype(np.float32)
    opts = PredictorOptions(max_samples=s, max_rows=s * len(x))
    pred = Predictor(path, provider=provider, seed=0, options=opts)
    m = pred.predict(x, s, return_samples=True).samples.astype(np.float64)
    b = m[:, 0]
    w = (m[:, 1:] - b[:, None]).transpose(0, 2, 1)  # [S, out, in]
    return np.concatenate([w.reshape(s, -1), b], axis=1)


def assert_moments(theta: np.ndarray, mean: np.ndarray, cov: np.ndarray, z: float = 5.0):
    """Draws ``theta [N, P]`` have ``mean [P]`` and ``cov [P, P]``: every entry within ``z``
    standard errors (of a mean: sqrt(var/N); of a covariance: sqrt((s_ii s_jj + s_ij^2)/N))."""
    n = theta.shape[0]
    var = np.diag(cov)
    m_se = np.sqrt(var / n)
    assert np.all(np.abs(theta.mean(0) - mean) <= z * m_se + 1e-6), "posterior mean"
    emp = np.cov(theta, rowvar=False)
    c_se = np.sqrt((np.outer(var, var) + cov**2) / n)
    bad = np.abs(emp - cov) > z * c_se + 1e-9
    assert not bad.any(), f"covariance entries off: {np.argwhere(bad)[:5].tolist()}"


def digits() -> Split:
    """scikit-learn's bundled 8x8 digits as ``[N, 1, 8, 8]`` in [0, 1]; 1400 train / 397 test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.random.default_rng(0).permutation(len(d.target))
    x = torch.tensor(d.images[idx] / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target[idx], dtype=torch.long)
    return Split(x[:1400], y[:1400], x[1400:], y[1400:])


def digits_flat(n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8x8 digits in file order: ``x [N, 64]`` float32, ``(v / 16 - 0.3) / 0.4``, and labels
    ``y [N]`` int64; ``n``: only the first n rows."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor((d.data / 16.0 - 0.3) / 0.4, dtype=torch.float32)
    return x[:n], torch.tensor(d.target[:n], dtype=torch.long)


def fit_minibatch(model: nn.Module, x, y, loss_fn, *, epochs: int, lr: float, seed: int):
    """Adam over ``epochs`` passes of shuffled batches of 64 (order from a generator seeded with
    ``seed``), minimising ``loss_fn(model, x_batch, y_batch)``; returns the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            b = perm[i : i + 64]
            opt.zero_grad()
            loss_fn(model, x[b], y[b]).backward()
            opt.step()
    return model.eval()


def small_cnn(seed: int = 0) -> nn.Module:
    """Conv(1->8, 3x3, pad 1) -> ReLU -> Conv(8->8, 3x3, stride 2) -> ReLU -> Linear(72 -> 10)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(72, 10),
    )  # fmt: skip


def diabetes_fp32_int8(post, posterior: str, sampling: str | None, hetero: bool, dia: Split,
                       folder) -> tuple:  # fmt: skip
    """Export ``post`` for regression to ``folder/fp32.onnx`` (homoscedastic heads get the
    training residual variance as observation noise; Laplace carries its own sigma_noise) and
    INC-quantize it to ``folder/int8.onnx``; returns ``(fp32 path, QuantizeResult)``."""
    from pathlib import Path

    from qbnn.exporters import export
    from qbnn.pipeline.quantize import QuantConfig, quantize_model

    kw = {"task": "regression", "posterior": posterior, "sampling": sampling, "seed": 0,
          "heteroscedastic": hetero, "verify_samples": 200}  # fmt: skip
    fp32 = Path(folder) / "fp32.onnx"
    export(post, dia.x_test[:16], fp32, **kw)
    if not hetero and posterior != "laplace":
        out = Predictor(fp32, seed=0).predict(dia.x_train.numpy(), 16)
        residual = float(((out.pred_mean - dia.y_train.numpy()) ** 2).mean())
        export(post, dia.x_test[:16], fp32, noise_variance=residual, **kw)
    q = quantize_model(fp32, Path(folder) / "int8.onnx", QuantConfig(), calib=dia.x_train.numpy())
    return fp32, q
