"""Compressing a mean-field posterior itself (issue 23, item 1): sigma on a log grid or per
channel, pruning by |mu| / sigma, weights drawn at run time rounded before their op, and
``--auto`` planning only what the graph can run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from qbnn.exporters import export
from qbnn.pipeline.compress import (
    AutoConfig,
    LayerPlan,
    Plan,
    ShareConfig,
    auto_plan,
    deploy_plan,
    deploy_share,
)
from qbnn.pipeline.compress.layers import find_layers, layer_posterior
from qbnn.pipeline.compress.sigma import log_grid, snr_prune
from qbnn.runtimes.errors import ConfigError

from compress_tiny import data, run
from tiny_models import bayes_cnn


@pytest.fixture(scope="module")
def weight_mode(tmp_path_factory):
    """The tiny Bayesian CNN in the default ``weight`` mode (Scan over drawn weights)."""
    path = tmp_path_factory.mktemp("mf") / "weight.onnx"
    export(bayes_cnn(), torch.from_numpy(data(4)[0]), path, seed=0, verify=False)
    return path


def test_log_grid_codes_scales_within_the_grid_ratio():
    # 16 values from 1e-3 to 1e-1: ratio r = 100 ** (1/15) between neighbours (no zeros)
    rng = np.random.default_rng(0)
    s = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), 500)).astype(np.float32)
    s[:2] = 1e-3, 1e-1
    book, idx = log_grid(s, 4)
    assert book.size == 16
    np.testing.assert_allclose(book[[0, -1]], [1e-3, 1e-1], rtol=1e-6)
    np.testing.assert_allclose(book[1] / book[0], 100 ** (1 / 15), rtol=1e-5)
    err = np.abs(np.log(book[idx] / s))  # nearest in log space: at most half a grid step
    assert err.max() <= np.log(100 ** (1 / 15)) / 2 + 1e-6
    # a zero scale (a pruned weight) keeps exactly 0 and takes one of the 16 values
    book0, idx0 = log_grid(np.array([0.0, 1e-2, 2e-2], np.float32), 4)
    assert book0[0] == 0 and book0[idx0[0]] == 0 and book0.size <= 16
    np.testing.assert_allclose(book0[idx0[1:]], [1e-2, 2e-2], rtol=1e-6)


def test_snr_prune_zeroes_mu_and_sigma_below_t(weight_mode):
    model = onnx.load(weight_mode)
    lay = find_layers(model)["fc"]
    mu, sigma = layer_posterior(model, lay)
    low = np.abs(mu) < 1.0 * sigma
    assert 0 < low.mean() < 1  # the threshold splits this layer
    frac = snr_prune(model, lay, 1.0)
    assert frac == pytest.approx(low.mean())
    mu2, sigma2 = layer_posterior(model, lay)
    assert (mu2[low] == 0).all() and (sigma2[low] == 0).all()
    np.testing.assert_array_equal(mu2[~low], mu[~low])
    np.testing.assert_array_equal(sigma2[~low], sigma[~low])


def test_auto_plans_only_what_deploy_runs(weight_mode, tmp_path):
    model = onnx.load(weight_mode)
    layers = find_layers(model)
    assert all(lay.drawn and not lay.nodes for lay in layers.values())
    x = data(32, seed=2)[0]
    for f in (0.05, 4.0):
        plan = auto_plan(model, f, 1.0, act_bits=8, match=0.8, sigma_bits=4)
        assert {lp.act_bits for lp in plan.layers.values()} == {8}
        res = deploy_plan(weight_mode, tmp_path / f"a{f}.onnx", plan, calib=x)  # no refusal
        assert {lay.route for lay in res.layers} == {"drawn"}
        assert 0 < res.relative_bops <= 8 * 8 / 1024
        out = run(res.path, x, samples=8)["mean_probs"]
        np.testing.assert_allclose(out.sum(1), 1, atol=1e-5)
    # a graph where compress cannot reach the op of the drawn weight: fp32 activations planned
    cut = onnx.load(weight_mode)
    for n in list(cut.graph.node):
        if n.op_type == "Scan":
            k = list(n.input).index(layers["conv"].drawn[0][0])
            ident = onnx.helper.make_node("Identity", [n.input[k]], ["cut"], name="cut")
            cut.graph.node.insert(list(cut.graph.node).index(n), ident)
            n.input[k] = "cut"
    onnx.save(cut, tmp_path / "cut.onnx")
    plan = auto_plan(cut, 1.0, 0.0, act_bits=8)
    assert plan.layer("conv").act_bits == 32 and plan.layer("fc").act_bits == 8
    deploy_plan(tmp_path / "cut.onnx", tmp_path / "c.onnx", plan, calib=x)
    with pytest.raises(ConfigError, match=r"layers.conv.act_bits: 8 needs an op that reads"):
        bad = Plan(layers={"conv": LayerPlan(weight_bits=4, act_bits=8)})
        deploy_plan(tmp_path / "cut.onnx", tmp_path / "d.onnx", bad, calib=x)
    assert not (tmp_path / "d.onnx").exists()


def test_drawn_rounding_puts_every_draw_on_the_grid(weight_mode, tmp_path):
    plan = Plan.from_dict({"default": {"weight_bits": 4}})
    x = data(8, seed=3)[0]
    res = deploy_plan(weight_mode, tmp_path / "r.onnx", plan, calib=x)
    m = onnx.load(res.path)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    steps = {k: v for k, v in inits.items() if k.startswith("qbnn/compress/drawn/")
             and k.endswith("/s")}  # fmt: skip
    assert len(steps) == 2  # conv and fc
    name, step = next(iter(steps.items()))
    tensor = name.removesuffix("/s") + "/q"
    m.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    onnx.save(m, tmp_path / "tap.onnx")
    drawn = run(tmp_path / "tap.onnx", x, samples=16)[tensor]
    codes = drawn / step
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)  # on the grid
    assert np.abs(np.round(codes)).max() <= 7 and np.unique(np.round(codes)).size > 2


@pytest.mark.parametrize("sigma_bits", [0, 4, 32])
def test_share_codes_sigma(weight_mode, tmp_path, sigma_bits):
    res, _ = deploy_share(weight_mode, tmp_path / "s.onnx", ShareConfig(sigma_bits=sigma_bits))
    m = onnx.load(res.path)
    names = {i.name for i in m.graph.initializer}
    sig = "source.sigma__conv__weight"
    assert (sig in names) == (sigma_bits == 32)  # rebuilt by Gather / Expand otherwise
    x = data(16, seed=4)[0]
    a = run(weight_mode, x, samples=256)["mean_probs"]
    b = run(res.path, x, samples=256)["mean_probs"]
    assert np.abs(a - b).max() < 0.25  # mu moved within 2 sigma, sigma coded; MC at S = 256
    if sigma_bits == 4:  # fc: 256 sigmas, 1024 bytes in fp32 -> <= 16-value codebook + UINT4
        mu_only = deploy_share(weight_mode, tmp_path / "m.onnx", ShareConfig(sigma_bits=32))[0]
        coded = {r.name: r.bytes for r in res.layers}["fc"]
        extra = coded - {r.name: r.bytes for r in mu_only.layers}["fc"]
        assert 256 // 2 < extra <= 16 * 4 + 256 // 2


def test_sigma_options_are_checked():
    with pytest.raises(ConfigError, match=r"sigma_bits: 3 is not one of 0, 4, 8, 32"):
        Plan.from_dict({"default": {"sigma_bits": 3}})
    with pytest.raises(ConfigError, match=r"share.sigma_bits: 2 is not one of 0"):
        ShareConfig(sigma_bits=2)
    with pytest.raises(ConfigError, match=r"prune_snr: -1 is not a number >= 0"):
        LayerPlan(prune_snr=-1)
    with pytest.raises(ConfigError, match=r"auto.sigma_bits"):
        AutoConfig(sigma_bits=(5,))


@pytest.mark.parametrize(
    ("family", "sampling", "drawn"),
    [("lrt", "lrt", False), ("flipout", None, False), ("flipout", "weight", True)],
    ids=["lrt", "flipout", "flipout-weight"],
)
def test_lrt_and_flipout_graphs_compress_mu_and_sigma(family, sampling, drawn, tmp_path):
    from tiny_models import flipout_cnn

    src = tmp_path / f"{family}.onnx"
    net = bayes_cnn() if family == "lrt" else flipout_cnn()
    kw = {"sampling": sampling} if sampling else {}
    export(net, torch.from_numpy(data(4)[0]), src, seed=0, verify=False, **kw)
    model = onnx.load(src)
    layers = find_layers(model)
    # lrt and flipout's estimator (the default of a convolutional flipout model): ops read mu
    # and sigma directly; flipout's weight mode: weights drawn at run time
    assert all(bool(lay.nodes) != drawn for lay in layers.values())
    assert all(bool(lay.drawn) == drawn for lay in layers.values())
    x = data(32, seed=2)[0]
    plan = auto_plan(model, 1.0, 0.5, act_bits=8, match=0.8, sigma_bits=0)
    res = deploy_plan(src, tmp_path / "a.onnx", plan, calib=x)
    assert 0 < res.relative_bops < 1
    scales = {n for lay in layers.values() for n in lay.scales}
    kept = {i.name for i in onnx.load(res.path).graph.initializer}
    assert not scales & kept  # every weight scale replaced by one value per channel
    a = run(src, x, samples=64)["mean_probs"]
    b = run(res.path, x, samples=64)["mean_probs"]
    assert np.abs(a - b).max() < 0.2  # 2-bit mu on these tiny untrained nets; MC at S = 64
    shared, _ = deploy_share(src, tmp_path / "s.onnx", ShareConfig(sigma_bits=4))
    assert not scales & {i.name for i in onnx.load(shared.path).graph.initializer}
