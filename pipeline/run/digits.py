"""The embedded demo data and models: scikit-learn's bundled UCI digits, no download.

Split: classes 0-7 are in-distribution (train / test, stratified), classes 8 and 9 are held out
as out-of-distribution data. Same sensor, same preprocessing, unseen classes: a near-OOD split
that a good posterior should flag through higher predictive entropy / mutual information.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DigitsSplit", "bayes_cnn", "det_cnn", "load_split", "train"]

IN_CLASSES = 8


@dataclass(frozen=True)
class DigitsSplit:
    """Images ``[N, 1, 8, 8]`` float32 in ``[0, 1]``; labels ``[N]`` int64 in ``[0, 8)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_ood: np.ndarray


def load_split(seed: int = 0, test_fraction: float = 0.3) -> DigitsSplit:
    """Load the bundled digits and split as described in the module docstring."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    ind = y < IN_CLASSES
    xtr, xte, ytr, yte = train_test_split(
        x[ind], y[ind], test_size=test_fraction, random_state=seed, stratify=y[ind]
    )
    return DigitsSplit(xtr, ytr, xte, yte, x[~ind])


def bayes_cnn(num_classes: int = IN_CLASSES, rho: float = -4.0):
    """Bayesian CNN from Bayesian-Torch layers. ``[B, 1, 8, 8] -> [B, num_classes]`` logits."""
    import torch
    from bayesian_torch.layers import Conv2dReparameterization as Conv
    from bayesian_torch.layers import LinearReparameterization as Lin
    from torch import nn

    class BayesDigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = Conv(1, 16, 3, padding=1, posterior_rho_init=rho)
            self.conv2 = Conv(16, 32, 3, padding=1, posterior_rho_init=rho)
            self.fc1 = Lin(32 * 2 * 2, 64, posterior_rho_init=rho)
            self.fc2 = Lin(64, num_classes, posterior_rho_init=rho)

        def forward(self, x):
            kl = 0.0
            h, k = self.conv1(x)
            kl = kl + k
            h = torch.max_pool2d(torch.relu(h), 2)
            h, k = self.conv2(h)
            kl = kl + k
            h = torch.max_pool2d(torch.relu(h), 2).flatten(1)
            h, k = self.fc1(h)
            kl = kl + k
            out, k = self.fc2(torch.relu(h))
            return out, kl + k

    return BayesDigitsCNN()


def det_cnn(num_classes: int = IN_CLASSES):
    """The deterministic twin of :func:`bayes_cnn`. ``[B, 1, 8, 8] -> [B, num_classes]``."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, num_classes),
    )  # fmt: skip


def train(
    model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 40,
    seed: int = 0,
    lr: float = 3e-3,
    batch_size: int = 64,
    progress=None,
):
    """Train in place with Adam; Bayesian models minimise NLL + KL / N (ELBO)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(xt)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            out = model(xt[idx])
            logits, kl = out if isinstance(out, tuple) else (out, 0.0)
            loss = F.cross_entropy(logits, yt[idx]) + kl / n
            opt.zero_grad()
            loss.backward()
            opt.step()
        if progress is not None:
            progress(epoch + 1, epochs)
    return model.eval()
