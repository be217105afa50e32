"""Regression example: a last-layer Laplace posterior on scikit-learn's bundled diabetes data.

``python examples/diabetes/diabetes_models.py`` writes ``calib.npz`` and ``test.npz`` beside
this file; ``qbnn run examples/diabetes/pipeline.yaml`` then exports, quantizes, validates and
benchmarks the model. The factories train in about a second (seeded, CPU), so they train on
every call instead of loading weights: a MAP MLP (``map_mlp``, the deterministic baseline) and
laplace-torch's Kronecker-factored last-layer Laplace around it (``laplace_mlp``), whose
``sigma_noise`` (the MAP's training residual std) becomes the graph's observation noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_diabetes
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

N_TEST = 100


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffled (seed 0), standardized on the training part: x [N, 10], y [N, 1] float32."""
    d = load_diabetes()
    idx = np.random.default_rng(0).permutation(len(d.target))
    x, y = d.data[idx], d.target[idx, None]
    x = (x - x[N_TEST:].mean(0)) / x[N_TEST:].std(0)
    y = (y - y[N_TEST:].mean()) / y[N_TEST:].std()
    x, y = x.astype(np.float32), y.astype(np.float32)
    return x[N_TEST:], y[N_TEST:], x[:N_TEST], y[:N_TEST]


def map_mlp() -> nn.Module:
    """10-16-1 tanh MLP, 100 full-batch Adam steps (longer overfits 342 rows)."""
    x, y, _, _ = (torch.from_numpy(a) for a in split())
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    return net.eval()


def laplace_mlp():
    """laplace-torch ``Laplace(..., subset_of_weights="last_layer", hessian_structure="kron")``
    around :func:`map_mlp`, prior precision tuned by marginal likelihood."""
    from laplace import Laplace

    x, y, _, _ = (torch.from_numpy(a) for a in split())
    net = map_mlp()
    with torch.no_grad():
        sigma = float((net(x) - y).std())
    la = Laplace(net, "regression", subset_of_weights="last_layer", hessian_structure="kron",
                 sigma_noise=sigma)  # fmt: skip
    la.fit(DataLoader(TensorDataset(x, y), batch_size=64))
    la.optimize_prior_precision(method="marglik")
    return la


def write_data(folder: str | Path = Path(__file__).parent) -> None:
    """``calib.npz`` (x: the training inputs) and ``test.npz`` (x, y) in ``folder``."""
    folder = Path(folder)
    x_tr, _, x_te, y_te = split()
    np.savez(folder / "calib.npz", x=x_tr)
    np.savez(folder / "test.npz", x=x_te, y=y_te)


if __name__ == "__main__":
    write_data()
    print(f"wrote calib.npz and test.npz to {Path(__file__).parent}")
