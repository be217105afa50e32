"""A small, faithful Bayesian Bits quantizer (van Baalen et al. 2020): learned ranges, gates
over the residual decomposition 2 -> 4 -> 8 -> 16 -> 32 with nested scales, trained briefly
with hard-concrete gates; the plan read from it reproduces its quantized outputs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from qbnn.exporters import export
from qbnn.pipeline.compress import (
    Plan,
    QuantizerState,
    bits_from_gates,
    deploy_plan,
    plan_from_bayesian_bits,
)
from qbnn.pipeline.compress.lowbit import weight_grid
from qbnn.runtimes.errors import ConfigError

from compress_tiny import TinyCNN, data, run

LEVELS = (2, 4, 8, 16, 32)
GAMMA, ZETA, BETA = -0.1, 1.1, 2.0 / 3.0  # hard-concrete stretch and temperature (Louizos 2018)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class BBQuantizer(nn.Module):
    """Bayesian Bits quantizer of one tensor: range ``[lo, hi]`` (signed: ``[-b, b]``,
    unsigned: ``[0, b]`` with learned ``b``) and one hard-concrete gate per level. In eval mode
    a gate is open when its deterministic hard-concrete value ``clip(sigmoid(log_alpha) *
    (zeta - gamma) + gamma, 0, 1)`` exceeds 0.5... rounded to {0, 1}."""

    def __init__(self, beta: float, signed: bool, log_alpha: tuple[float, ...]) -> None:
        super().__init__()
        self.signed = signed
        self.beta = nn.Parameter(torch.tensor(float(beta)))
        self.log_alpha = nn.Parameter(torch.tensor(log_alpha, dtype=torch.float32))

    def gates(self) -> torch.Tensor:
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + self.log_alpha) / BETA)
        else:
            s = torch.sigmoid(self.log_alpha)
        z = (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
        return z if self.training else (z > 0.5).float()

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.beta.abs()
        return (-b if self.signed else torch.zeros_like(b)), b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rnd = _round_ste if self.training else torch.round
        lo, hi = self.range()
        x = torch.minimum(torch.maximum(x, lo), hi)
        s = (hi - lo) / (2**2 - 1)
        x2 = s * rnd(x / s)
        r = x - x2  # residual error, quantized level by level with nested scales
        eps = []
        for b in LEVELS[:-1]:
            s = s / (2**b + 1)
            e = s * rnd(r / s)
            r = r - e
            eps.append(e)
        z = self.gates()
        out = z[4] * eps[3]
        for k in (3, 2, 1):
            out = z[k] * (eps[k - 1] + out)
        return z[0] * (x2 + out)

    def state(self) -> QuantizerState:
        lo, hi = self.range()
        return QuantizerState([int(g) for g in self.gates()], float(lo), float(hi))


class BBLayer(nn.Module):
    """A layer whose weight and input activation pass through Bayesian Bits quantizers."""

    def __init__(self, layer: nn.Module, w_alpha, a_alpha) -> None:
        super().__init__()
        self.layer = layer
        self.wq = BBQuantizer(layer.weight.detach().abs().max().item() * 0.9, True, w_alpha)
        self.aq = BBQuantizer(1.0, False, a_alpha)

    def forward(self, x):
        w = self.wq(self.layer.weight)
        x = self.aq(x)
        if isinstance(self.layer, nn.Conv2d):
            return nn.functional.conv2d(x, w, self.layer.bias, padding=1)
        return nn.functional.linear(x, w, self.layer.bias)


OPEN, SHUT = 6.0, -6.0
# (weight gates, activation gates) as initial log alphas: conv1 w8a8, conv2 w4a8, fc1 w2a4,
# fc2 w16 with fp32 (32-bit) activations
INIT = {
    "conv1": ((OPEN, OPEN, OPEN, SHUT, SHUT), (OPEN, OPEN, OPEN, SHUT, SHUT)),
    "conv2": ((OPEN, OPEN, SHUT, SHUT, SHUT), (OPEN, OPEN, OPEN, SHUT, SHUT)),
    "fc1": ((OPEN, SHUT, SHUT, SHUT, SHUT), (OPEN, OPEN, SHUT, SHUT, SHUT)),
    "fc2": ((OPEN, OPEN, OPEN, OPEN, SHUT), (OPEN,) * 5),
}


class BBNet(nn.Module):
    """TinyCNN with every layer under Bayesian Bits."""

    def __init__(self, net: TinyCNN) -> None:
        super().__init__()
        self.net = net
        self.q = nn.ModuleDict({n: BBLayer(getattr(net, n), *INIT[n]) for n in INIT})

    def forward(self, x):
        h = torch.max_pool2d(torch.relu(self.q["conv1"](x)), 2)
        h = torch.max_pool2d(torch.relu(self.q["conv2"](h)), 2).flatten(1)
        return self.q["fc2"](torch.relu(self.q["fc1"](h)))


@pytest.fixture(scope="module")
def trained():
    """A BBNet trained for 40 steps (weights, ranges and gates) on the synthetic task."""
    torch.manual_seed(0)
    net = BBNet(TinyCNN())
    x, y = (torch.from_numpy(a) for a in data(256, seed=0))
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    net.train()
    for _ in range(40):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_bits_from_gates():
    assert bits_from_gates((0, 1, 1, 1, 1)) == 0
    assert bits_from_gates((1, 0, 1, 1, 1)) == 2
    assert bits_from_gates((1, 1, 1, 0, 0)) == 8
    assert bits_from_gates((1, 1, 1, 1, 1)) == 32
    with pytest.raises(ConfigError, match=r"gates \[1, 2\] must be five 0/1 values"):
        bits_from_gates((1, 2))


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_nested_decomposition_is_the_deployed_grid(bits):
    """The gated residual sum equals the deployer's grid (``weight_grid`` with a range), which
    is the plain b-bit grid ``s_b round(x / s_b)`` away from ties; at the clip edges (ties for
    a symmetric range) the nested rounding decides, and the deployer follows it."""
    alphas = tuple(OPEN if level <= bits else SHUT for level in LEVELS)
    q = BBQuantizer(0.8, True, alphas).eval()
    x = torch.linspace(-1.2, 1.2, 1001)
    codes, s = weight_grid(x.numpy(), bits, rng=(-0.8, 0.8))
    torch.testing.assert_close(q(x), torch.from_numpy((codes * s).astype(np.float32)),
                               atol=1e-6, rtol=0)  # fmt: skip
    direct = float(s) * torch.round(x.clamp(-0.8, 0.8) / float(s))
    assert ((q(x) - direct).abs() > 1e-6).float().mean() < 0.4  # only ties (edges) differ


def test_plan_reproduces_the_trained_quantized_model(trained, tmp_path):
    plan = plan_from_bayesian_bits(
        {n: m.wq.state() for n, m in trained.q.items()},
        {n: m.aq.state() for n, m in trained.q.items()},
    )
    bits = {n: (lp.weight_bits, lp.act_bits) for n, lp in plan.layers.items()}
    assert bits == {"conv1": (8, 8), "conv2": (4, 8), "fc1": (2, 4), "fc2": (16, 32)}
    latent = copy.deepcopy(trained.net)  # the full-precision weights the quantizers read
    path = tmp_path / "latent.onnx"
    export([latent], torch.from_numpy(data(4)[0]), path, verify=False)
    calib = data(32, seed=3)[0]
    res = deploy_plan(path, tmp_path / "bb.onnx", plan, calib=calib)
    assert all(lay.route == "dq" for lay in res.layers)
    x = data(64, seed=21)[0]
    with torch.no_grad():
        ref = torch.softmax(trained(torch.from_numpy(x)), -1).numpy()
    got = run(res.path, x, samples=1)["probs"][0]
    assert np.abs(got - ref).max() <= 1e-5
    expected = sum(lay.macs_share * w * a for lay, (w, a) in
                   zip(res.layers, bits.values(), strict=True)) / 1024  # fmt: skip
    assert res.relative_bops == pytest.approx(expected)


def test_pruning_activation_quantizer_is_refused():
    with pytest.raises(ConfigError, match="layers.fc: activation quantizer with 0 bits"):
        plan_from_bayesian_bits(
            {"fc": QuantizerState((1, 1, 0, 0, 0), -1, 1)},
            {"fc": QuantizerState((0, 0, 0, 0, 0), 0, 1)},
        )
    assert isinstance(plan_from_bayesian_bits({}), Plan)
