"""Tiny seeded models, one per posterior family, shared by tests (and CLI factory specs).

Every factory seeds torch itself so a model is identical wherever it is built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from bayesian_torch.layers import (
    Conv1dReparameterization,
    Conv2dFlipout,
    Conv2dReparameterization,
    LinearFlipout,
    LinearReparameterization,
)
from bayesian_torch.models.dnn_to_bnn import dnn_to_bnn
from torch import nn

RHO = -2.0  # sigma = softplus(-2) ~ 0.127: visible spread in tiny models


class BayesMLP(nn.Module):
    """LinearReparameterization x2, Bayesian-Torch's (out, kl) convention. [B, 6] -> [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = LinearReparameterization(6, 16, posterior_rho_init=RHO)
        self.l2 = LinearReparameterization(16, 3, posterior_rho_init=RHO)

    def forward(self, x):
        h, kl1 = self.l1(x)
        out, kl2 = self.l2(torch.relu(h))
        return out, kl1 + kl2


class BayesCNN(nn.Module):
    """Conv2d (stride 2, groups 1) + BatchNorm + Linear. [B, 1, 8, 8] -> [B, 4]."""

    def __init__(self, conv=Conv2dReparameterization, linear=LinearReparameterization) -> None:
        super().__init__()
        self.conv = conv(1, 4, 3, stride=2, padding=1, posterior_rho_init=RHO)
        self.bn = nn.BatchNorm2d(4)
        self.fc = linear(4 * 4 * 4, 4, posterior_rho_init=RHO)

    def forward(self, x):
        h, _ = self.conv(x)
        h = torch.relu(self.bn(h)).flatten(1)
        out, _ = self.fc(h)
        return out


class BayesConv1d(nn.Module):
    """Conv1d (dilation 2, groups 2) + mean pool + Linear. [B, 2, 12] -> [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = Conv1dReparameterization(
            2, 4, 3, padding=2, dilation=2, groups=2, posterior_rho_init=RHO
        )
        self.fc = LinearReparameterization(4, 3, posterior_rho_init=RHO)

    def forward(self, x):
        h, _ = self.conv(x)
        out, _ = self.fc(torch.relu(h).mean(-1))
        return out


class DropoutMLP(nn.Module):
    """nn.Dropout, BatchNorm1d and inline F.dropout. [B, 6] -> [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(6, 32)
        self.drop = nn.Dropout(0.3)
        self.bn = nn.BatchNorm1d(32)
        self.l2 = nn.Linear(32, 3)

    def forward(self, x):
        h = self.bn(torch.relu(self.drop(self.l1(x))))
        return self.l2(F.dropout(h, 0.2, training=self.training))


class PlainMLP(nn.Module):
    """Deterministic [B, 6] -> [B, 3] (ensemble member, error cases)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(6, 16)
        self.l2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))


class SegNet(nn.Module):
    """The issue's segmentation net: conv -> dropout2d -> 1x1 conv to 3 classes, [B, 3, 8, 8]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.drop = nn.Conv2d(1, 8, 3, padding=1), nn.Dropout2d(0.2)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.conv(x))))


class StackedHeads(nn.Module):
    """An ensemble built into one network (own design): a shared body and 3 heads whose
    outputs are stacked member-major on the batch axis, as torch-uncertainty's one-network
    ensembles return them. [B, 6] -> [3 * B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(16, 3) for _ in range(3))

    def forward(self, x):
        z = self.body(x)
        return torch.cat([h(z) for h in self.heads])


class StackedDropout(nn.Module):
    """MC samples stacked on the batch axis (own design): the input repeated k = 4 times through
    dropout that stays on in eval mode (as torch-uncertainty's MC-dropout wrapper evaluates).
    [B, 6] -> [4 * B, 3], rows random."""

    def __init__(self, k: int = 4, p: float = 0.3) -> None:
        super().__init__()
        self.k, self.p = k, p
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x.repeat(self.k, 1)))
        return self.fc2(F.dropout(h, self.p, training=True))


def _seeded(fn):
    def make(*args, **kwargs):
        torch.manual_seed(0)
        return fn(*args, **kwargs)

    make.__name__ = fn.__name__
    return make


@_seeded
def bayes_mlp() -> nn.Module:
    return BayesMLP()


@_seeded
def bayes_cnn() -> nn.Module:
    return BayesCNN()


@_seeded
def flipout_cnn() -> nn.Module:
    return BayesCNN(Conv2dFlipout, LinearFlipout)


@_seeded
def bayes_conv1d() -> nn.Module:
    return BayesConv1d()


@_seeded
def dropout_mlp() -> nn.Module:
    return DropoutMLP()


@_seeded
def plain_mlp() -> nn.Module:
    return PlainMLP()


@_seeded
def ensemble() -> list[nn.Module]:
    return [PlainMLP() for _ in range(3)]


@_seeded
def stacked_heads() -> nn.Module:
    return StackedHeads()


@_seeded
def stacked_dropout() -> nn.Module:
    return StackedDropout()


@_seeded
def dnn_to_bnn_mlp() -> nn.Module:
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    dnn_to_bnn(net, bnn_prior())
    return net


def bnn_prior(kind: str = "Reparameterization", rho: float = RHO) -> dict:
    """dnn_to_bnn's prior/posterior parameters."""
    return {
        "prior_mu": 0.0,
        "prior_sigma": 1.0,
        "posterior_mu_init": 0.0,
        "posterior_rho_init": rho,
        "type": kind,
        "moped_enable": False,
        "moped_delta": 0.5,
    }


@_seeded
def resnet20_bnn() -> nn.Module:
    """Bayesian-Torch's CIFAR ResNet-20 converted with dnn_to_bnn. [B, 3, 32, 32] -> [B, 10]."""
    from bayesian_torch.models.deterministic.resnet import resnet20

    net = resnet20()
    dnn_to_bnn(net, bnn_prior(rho=-3.0))
    return net


class BBBLinear(nn.Module):
    """Hand-written Bayes-by-backprop Linear (issue 14): ``w = mu + softplus(rho) * eps``."""

    def __init__(self, d_in: int, d_out: int, rho: float = -2.0) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.randn(d_out, d_in) * 0.5)
        self.rho = nn.Parameter(torch.full((d_out, d_in), rho))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x):
        w = self.mu + F.softplus(self.rho) * torch.randn_like(self.mu)
        return F.linear(x, w, self.bias)


class BBBMLP(nn.Module):
    """Two hand-written BBB layers. [B, 6] -> [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = BBBLinear(6, 16)
        self.l2 = BBBLinear(16, 3)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))


class NoisyConvNet(nn.Module):
    """A BBB convolution (weight noise via torch.randn) plus Gaussian input noise and dropout.
    [B, 1, 8, 8] -> [B, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.randn(4, 1, 3, 3) * 0.5)
        self.log_sigma = nn.Parameter(torch.full((4, 1, 3, 3), -1.5))
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(4 * 4 * 4, 4)

    def forward(self, x):
        x = x + 0.3 * torch.randn_like(x)
        w = self.mu + self.log_sigma.exp() * torch.randn(self.mu.shape)
        h = torch.relu(F.conv2d(x, w, stride=2, padding=1)).flatten(1)
        return self.fc(self.drop(h))


@_seeded
def bbb_mlp() -> nn.Module:
    return BBBMLP()


@_seeded
def noisy_conv() -> nn.Module:
    return NoisyConvNet()


def not_a_module():
    return "nope"


#: (factory, feature shape) per case id
CASES = {
    "meanfield-mlp": (bayes_mlp, (6,)),
    "meanfield-cnn": (bayes_cnn, (1, 8, 8)),
    "meanfield-conv1d": (bayes_conv1d, (2, 12)),
    "meanfield-dnn_to_bnn": (dnn_to_bnn_mlp, (6,)),
    "flipout-cnn": (flipout_cnn, (1, 8, 8)),
    "mcdropout-mlp": (dropout_mlp, (6,)),
    "ensemble-mlp": (ensemble, (6,)),
    "stochastic-bbb": (bbb_mlp, (6,)),
    "stacked-heads": (stacked_heads, (6,)),
}


def example(shape: tuple[int, ...], batch: int = 4, seed: int = 1234) -> torch.Tensor:
    """Seeded standard-normal example input ``[batch, *shape]``."""
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed))


def ort_session(path):
    """A quiet CPU ONNX Runtime session of the file at ``path``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class UnitNoise(torch.nn.Module):
    """A Bayesian layer whose output *is* its noise: mu = 0, sigma = 1, no bias, input 1.

    ``[B, 1] -> [B, 64]``; exported as a regression model, ``mean`` holds N(0, 1) draws.
    """

    def __init__(self, kind: str = "reparam") -> None:
        super().__init__()
        layer = LinearReparameterization if kind == "reparam" else LinearFlipout
        self.l = layer(1, 64, bias=False)
        with torch.no_grad():
            self.l.mu_weight.zero_()
            self.l.rho_weight.fill_(float(torch.log(torch.expm1(torch.tensor(1.0)))))

    def forward(self, x):
        return self.l(x)[0]


class HeteroMLP(torch.nn.Module):
    """Bayesian regression head: [B, 6] -> [B, 4] = mean (2) and log-variance (2)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = LinearReparameterization(6, 16, posterior_rho_init=RHO)
        self.l2 = LinearReparameterization(16, 4, posterior_rho_init=RHO)

    def forward(self, x):
        h, _ = self.l1(x)
        out, _ = self.l2(torch.relu(h))
        return out


@_seeded
def hetero_mlp() -> torch.nn.Module:
    return HeteroMLP()
