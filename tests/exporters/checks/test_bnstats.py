"""Whole-network posteriors over BatchNorm nets (issue 14, item 6).

The reference is the SWAG authors' predictive: per draw, BatchNorm statistics re-estimated by
their ``bn_update`` (reset, then one pass in train mode with momentum ``b / (n + b)``, written
out here independently of qbnn and of ``torch.optim.swa_utils``), softmax, uniform average over
the draws. Graph vs reference: atol 1e-4 (float32 graph, float64 reference).
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from torch import nn

from qbnn.exporters import export_model
from qbnn.exporters.families.gaussian import WeightGaussian
from qbnn.exporters.families.swag import SwagPosterior
from qbnn.exporters.modules.vector import DiagTerm, VectorGaussian
from qbnn.runtimes.errors import ConfigError

from tiny_models import ort_session


def _data(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()


def _swag() -> SwagPosterior:
    """A BatchNorm MLP trained by SGD; SWAG from its last 20 epochs' iterates."""
    torch.manual_seed(0)
    x, y = _data()
    net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.2)
    snaps = []
    for epoch in range(40):
        for i in range(0, len(x), 32):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[i : i + 32]), y[i : i + 32]).backward()
            opt.step()
        if epoch >= 20:
            snaps.append({k: v.detach().clone() for k, v in net.named_parameters()})
    return SwagPosterior.from_snapshots(net.eval(), snaps, rank=10, scale=0.5)


@pytest.fixture(scope="module")
def swag() -> SwagPosterior:
    return _swag()


def swag_factory() -> SwagPosterior:
    """CLI factory."""
    return _swag()


def _authors_bn_update(net: nn.Module, data: torch.Tensor, batch: int = 128) -> None:
    """The SWAG authors' ``utils.bn_update``: reset the running statistics, then a cumulative
    average over one pass (momentum b / (n + b)) in train mode."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
    net.train()
    n = 0
    with torch.no_grad():
        for chunk in data.split(batch):
            b = len(chunk)
            for m in bns:
                m.momentum = b / (n + b)
            net(chunk)
            n += b
    net.eval()


def _draw_nets(model: nn.Module, names, thetas: torch.Tensor) -> list[nn.Module]:
    nets = []
    for theta in thetas:
        net = copy.deepcopy(model).eval()
        params = dict(net.named_parameters())
        start = 0
        with torch.no_grad():
            for name in names:
                p = params[name]
                p.copy_(theta[start : start + p.numel()].reshape(p.shape))
                start += p.numel()
        nets.append(net)
    return nets


def _predictive(nets, x) -> np.ndarray:
    with torch.no_grad():
        return torch.stack([n(x) for n in nets]).double().softmax(-1).mean(0).numpy()


def _mean_probs(path, x, s) -> np.ndarray:
    feed = {"input": x.numpy(), "num_samples": np.array(s, dtype=np.int64)}
    return ort_session(path).run(["mean_probs"], feed)[0].astype(np.float64)


def _authors(post, seed: int, k: int, x: torch.Tensor, data: torch.Tensor):
    """(authors' predictive with bn_update, predictive with the stored statistics) of the K
    draws a ``frozen:K`` export with ``seed`` stores."""
    thetas = post.gaussian().sample(k, torch.Generator().manual_seed(seed))
    nets = _draw_nets(post.model, post.param_names, thetas)
    stored = _predictive(nets, x)
    for net in nets:
        _authors_bn_update(net, data)
    return _predictive(nets, x), stored


def test_swag_frozen_with_bn_update_is_the_authors_predictive(tmp_path, swag):
    """Issue example: the graph reused the stored statistics for every draw, silently."""
    data, _ = _data()
    x = _data(6, seed=3)[0]
    res = export_model(swag, x[:4], tmp_path / "f.onnx", sampling="frozen:8", seed=0,
                       bn_update=data)  # fmt: skip
    truth, stored = _authors(swag, 0, 8, x, data)
    for s in (8, 3):  # exact mode: uniform over the 8 draws at any S
        np.testing.assert_allclose(_mean_probs(res.path, x, s), truth, atol=1e-4)
    assert np.abs(truth - stored).max() > 5e-3  # the stored statistics give another answer
    assert any(n.startswith("BatchNorm statistics recomputed per draw on 256 rows")
               for n in res.notes)  # fmt: skip


def test_swag_in_graph_sampling_warns_with_the_measured_effect(tmp_path, swag, caplog):
    data, _ = _data()
    x = _data(6, seed=3)[0][:4]
    with caplog.at_level(logging.WARNING, logger="qbnn.export"):
        res = export_model(swag, x, tmp_path / "w.onnx", seed=0, bn_update=data)
    truth, stored = _authors(swag, 0, 8, x, data)
    gap = f"{np.abs(truth - stored).max():.3g}"
    expected = (
        "the network has BatchNorm and the 'swag' posterior changes every weight, but each draw "
        "reuses the stored BatchNorm statistics (the SWAG authors recompute them per draw): "
        f"recomputing them on the 256 bn_update rows changes mean_probs on the example input by "
        f"up to {gap} (8 draws); for the authors' predictive export sampling='frozen:K' with "
        "bn_update=<training inputs> (--bn-update)"
    )
    assert expected in caplog.text
    assert "warning: " + expected in res.notes
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="qbnn.export"):
        export_model(swag, x, tmp_path / "n.onnx", seed=0, verify=False)
    assert "the effect is not measured without training inputs" in caplog.text


def test_bn_update_refused_where_it_cannot_apply(tmp_path, swag):
    data, _ = _data()
    x = data[:4]
    torch.manual_seed(0)
    members = [nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).eval()
               for _ in range(2)]  # fmt: skip
    with pytest.raises(ConfigError) as info:
        export_model(members, x, tmp_path / "e.onnx", bn_update=data)
    assert str(info.value) == (
        "bn_update recomputes BatchNorm statistics per posterior draw: it applies to "
        "whole-network posteriors (flipout, gaussian, laplace, meanfield, swag; not last-layer "
        "ones) of a network with BatchNorm; got posterior 'ensemble'"
    )
    with pytest.raises(ConfigError, match=r"bn_update inputs have feature shape \[5\] but the"):
        export_model(swag, x, tmp_path / "s.onnx", sampling="frozen:2", bn_update=data[:, :5])
    assert not list(tmp_path.iterdir())


class ConvBN(nn.Module):
    """Designed here: conv -> BatchNorm2d -> ReLU -> pool -> linear, 1x6x6 inputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 9, 3)

    def forward(self, x):
        h = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(h.flatten(1))


def test_gaussian_conv_bn_many_draws_in_the_sample_loop(tmp_path):
    """A user Gaussian over every weight of a conv + BatchNorm2d net, frozen:40 (> 32: draws
    stacked and run in the sample loop, where the recomputed statistics become stacked too)."""
    g = torch.Generator().manual_seed(5)
    data = torch.randn(96, 1, 6, 6, generator=g) * 2.0 + 0.5
    net = ConvBN()
    with torch.no_grad():  # running statistics of the mean weights, as after training
        _authors_bn_update(net, data)
    names = tuple(n for n, _ in net.named_parameters())
    mean = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    post = VectorGaussian(mean, (DiagTerm(0, torch.full_like(mean, 0.15)),))
    wg = WeightGaussian(net, post)
    x = torch.randn(3, 1, 6, 6, generator=g)
    res = export_model(wg, x, tmp_path / "c.onnx", sampling="frozen:40", seed=7, bn_update=data)
    thetas = post.sample(40, torch.Generator().manual_seed(7))
    nets = _draw_nets(net, names, thetas)
    stored = _predictive(nets, x)
    for n in nets:
        _authors_bn_update(n, data)
    truth = _predictive(nets, x)
    np.testing.assert_allclose(_mean_probs(res.path, x, 5), truth, atol=1e-4)
    assert np.abs(truth - stored).max() > 5e-3


def test_cli_bn_update(tmp_path):
    from typer.testing import CliRunner

    from qbnn.pipeline.cli import app

    np.savez(tmp_path / "train.npz", x=_data()[0].numpy())
    args = ["export", "-m", "test_bnstats:swag_factory", "--input-shape", "6", "--posterior",
            "swag", "--sampling", "frozen:2", "--bn-update", str(tmp_path / "train.npz"),
            "-o", str(tmp_path / "m.onnx")]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "note: BatchNorm statistics recomputed per draw on 256 rows" in res.output


class _HeadOnBnBody(nn.Module):
    """Conv-BN-ReLU body, then a Bayesian-Torch head (``head_first=False``), or a Bayesian conv
    before the BatchNorm (``head_first=True``)."""

    def __init__(self, bayes_conv: bool) -> None:
        super().__init__()
        from bayesian_torch.layers import Conv2dReparameterization, LinearReparameterization

        self.conv = Conv2dReparameterization(1, 4, 3) if bayes_conv else nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3) if bayes_conv else LinearReparameterization(4, 3)

    def forward(self, x):
        h = self.conv(x)
        h = h[0] if isinstance(h, tuple) else h
        h = torch.relu(self.bn(h)).mean((2, 3))
        out = self.head(h)
        return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("bayes_conv", [False, True])
def test_batchnorm_warning_only_when_a_sampled_layer_feeds_it(tmp_path, caplog, bayes_conv):
    """A Bayesian head on a BatchNorm backbone: every draw sees the same BatchNorm inputs, so
    the stored statistics are right and no warning is due; a Bayesian conv before the
    BatchNorm changes its inputs per draw: warned."""
    from qbnn.exporters.checks.bnstats import batchnorm_after_posterior

    torch.manual_seed(0)
    net = _HeadOnBnBody(bayes_conv).eval()
    x = torch.randn(4, 1, 6, 6)
    assert batchnorm_after_posterior(net, x) is bayes_conv
    with caplog.at_level(logging.WARNING, logger="qbnn.export"):
        res = export_model(net, x, tmp_path / "m.onnx", verify=False)
    warned = any("BatchNorm" in n for n in res.notes)
    assert warned is bayes_conv, res.notes
    assert any("BatchNorm" in r.getMessage() for r in caplog.records) is bayes_conv
