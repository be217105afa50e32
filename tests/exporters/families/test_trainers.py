"""Laplace (laplace-torch), SWAG and SG-MCMC posteriors.

Fidelity is checked against each trainer's own sampler (laplace-torch's ``predictive_samples``,
the SWAG authors' sampling loop, the member loop); the graph's *parameter* draws are read out of
single-layer models and compared with the exact posterior covariance; quantized graphs are
gated by ``validate``'s regression gates on scikit-learn's bundled diabetes data.

Statistical tolerances: moments of N draws are compared in standard errors (|z| <= 5 for every
entry: with ~100 entries a false alarm has probability < 1e-4); seeds are fixed throughout.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from qbnn.exporters import (
    DenseTerm,
    DiagTerm,
    KronTerm,
    SwagPosterior,
    VectorGaussian,
    WeightGaussian,
    WeightSamples,
    export,
    export_model,
)
from qbnn.exporters.families import laplace as la_mod
from qbnn.exporters.families.laplace import laplace_posterior
from qbnn.pipeline.cli import app
from qbnn.pipeline.quantize import QuantConfig, quantize_model
from qbnn.runtimes import Predictor
from qbnn.runtimes.errors import (
    ConfigError,
    ExportError,
    UnsupportedLayerError,
    VerificationError,
)

import trainers as T

LAPLACE_CASES = [(s, h) for s in ("last_layer", "all") for h in ("full", "kron", "diag")]
IDS = [f"{s}-{h}" for s, h in LAPLACE_CASES]


@pytest.fixture(scope="module")
def iris():
    return T.iris()


@pytest.fixture(scope="module")
def iris_laplace(iris):
    net = T.fit(T.mlp(4, 3, hidden=16), iris.x_train, iris.y_train, "ce", steps=300)
    return {
        case: T.laplace(net, iris.x_train, iris.y_train, "classification", *case)
        for case in LAPLACE_CASES
    }


@pytest.fixture(scope="module")
def dia():
    return T.diabetes()


# --------------------------------------------------------------------------- Laplace


@pytest.mark.parametrize("case", LAPLACE_CASES, ids=IDS)
def test_laplace_posterior_covariance_is_laplace_torchs(iris_laplace, case):
    la = iris_laplace[case]
    cov = laplace_posterior(la).covariance()
    if case[1] == "full":
        ref = la.posterior_covariance
    elif case[1] == "kron":
        ref = la.posterior_precision.to_matrix(exponent=-1)
    else:
        ref = torch.diag(la.posterior_variance)
    ref = ref.double()
    torch.testing.assert_close(cov, ref, rtol=1e-3, atol=1e-5 * float(ref.abs().max()))
    torch.testing.assert_close(laplace_posterior(la).mean, la.mean.float())


@pytest.mark.parametrize("mode", ["weight", "frozen:5"])
@pytest.mark.parametrize("case", LAPLACE_CASES, ids=IDS)
def test_laplace_export_matches_predictive_samples(tmp_path, iris, iris_laplace, case, mode):
    la = iris_laplace[case]
    res = export_model(
        la, iris.x_test[:16], tmp_path / "la.onnx", sampling=mode, verify_samples=400, seed=0
    )
    assert res.family == "laplace" and res.sampling == mode
    assert f"{case[1]} Laplace over" in res.notes[0]
    f = res.fidelity
    if mode == "weight":  # statistical, against la.predictive_samples(pred_type="nn")
        assert not f.exact and f.max_z < 5
        assert abs(f.spread_graph - f.spread_torch) <= 0.1 * f.spread_torch
        assert f.spread_torch > 0.01  # the posterior is visibly stochastic on this data
    else:  # the stored draws (from the factors checked in the covariance test) vs the graph
        assert f.exact and f.max_abs_mean_diff < 1e-4


def test_the_self_check_catches_a_wrong_covariance(tmp_path, iris, iris_laplace, monkeypatch):
    """Negative control: a graph whose posterior scale is doubled fails the self-check."""
    real = la_mod.laplace_posterior

    def doubled(la):
        post = real(la)
        terms = tuple(type(t)(t.start, t.scale * 2.0) for t in post.terms)
        return type(post)(post.mean, terms)

    monkeypatch.setattr(la_mod, "laplace_posterior", doubled)
    la = iris_laplace[("last_layer", "full")]
    with pytest.raises(VerificationError, match="spread"):
        export(la, iris.x_test[:16], tmp_path / "bad.onnx", verify_samples=400)
    assert not (tmp_path / "bad.onnx").exists()  # nothing half-written


@pytest.mark.parametrize("structure", ["kron", "diag"])
def test_laplace_over_convolutions(tmp_path, structure):
    """All-weights Laplace of a small CNN trained on digits: every conv weight is sampled per MC
    sample (im2col kernels) and matches laplace-torch's own sampler."""
    d = T.digits()
    net = T.fit(T.small_cnn(), d.x_train, d.y_train, "ce", steps=150)
    with torch.no_grad():
        acc = float((net(d.x_test).argmax(1) == d.y_test).float().mean())
    assert acc > 0.85
    la = T.laplace(net, d.x_train, d.y_train, "classification", "all", structure)
    res = export_model(la, d.x_test[:8], tmp_path / "cnn.onnx", verify_samples=300, seed=0)
    f = res.fidelity
    assert f.max_z < 5 and abs(f.spread_graph - f.spread_torch) <= 0.1 * f.spread_torch
    assert f.spread_torch > 0.005


def _linear_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.randn(3, 2, generator=g) + 0.3 * torch.randn(64, 2, generator=g)
    return x, y


READOUT = [("last_layer", "full"), ("last_layer", "kron"), ("last_layer", "diag"), ("all", "kron")]


@pytest.mark.parametrize(("subset", "structure"), READOUT)
def test_graph_draws_have_the_laplace_covariance(tmp_path, subset, structure):
    x, y = _linear_data()
    net = T.fit(nn.Sequential(nn.Linear(3, 2)), x, y)
    kw = {"last_layer_name": "0"} if subset == "last_layer" else {}
    la = T.laplace(net, x, y, "regression", subset, structure, prior_precision=1.0, **kw)
    path = export(la, x[:4], tmp_path / "l.onnx", task="regression", verify=False)
    theta = T.linear_readout(path, 3, 20000)
    post = laplace_posterior(la)
    T.assert_moments(theta, post.mean.double().numpy(), post.covariance().numpy())
    # and the structure matters: a diagonal-only covariance is rejected for the dense ones
    if structure != "diag":
        with pytest.raises(AssertionError, match="covariance"):
            T.assert_moments(theta, post.mean.double().numpy(), np.diag(np.diag(post.covariance())))


def test_laplace_regression_adds_sigma_noise(tmp_path):
    x, y = _linear_data()
    net = T.fit(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)), x, y)
    la = T.laplace(net, x, y, "regression", "last_layer", "kron", sigma_noise=0.5)
    path = export(la, x[:4], tmp_path / "r.onnx", task="regression", verify=False)
    out = Predictor(path, seed=0).predict(x[:6].numpy(), 64, return_samples=True)
    np.testing.assert_allclose(out.pred_variance, out.samples.var(0) + 0.25, rtol=1e-4)
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert float(meta["qbnn.noise_variance"]) == pytest.approx(0.25)
    assert meta["qbnn.posterior"] == "laplace" and meta["qbnn.source"].startswith("laplace-torch")


def test_laplace_errors(tmp_path, iris, iris_laplace, monkeypatch):
    from laplace import Laplace

    unfitted = Laplace(
        T.mlp(4, 3), "classification", subset_of_weights="all", hessian_structure="diag"
    )
    with pytest.raises(ExportError, match="not fitted: call la.fit"):
        export(unfitted, iris.x_test[:4], tmp_path / "u.onnx")
    la = iris_laplace[("last_layer", "kron")]
    with pytest.raises(ExportError, match="fitted with likelihood 'classification'"):
        export(la, iris.x_test[:4], tmp_path / "t.onnx", task="regression")
    with pytest.raises(ConfigError, match="valid modes: weight, frozen:K"):
        export(la, iris.x_test[:4], tmp_path / "m.onnx", sampling="lrt")
    gp = Laplace(T.mlp(4, 3), "classification", subset_of_weights="last_layer",
                 hessian_structure="gp", n_subset=10)  # fmt: skip
    with pytest.raises(UnsupportedLayerError, match="FunctionalLLLaplace is not supported"):
        export(gp, iris.x_test[:4], tmp_path / "gp.onnx")
    monkeypatch.setattr(la_mod, "MAX_DENSE_PARAMS", 40)
    with pytest.raises(ExportError, match="qbnn exports at most 40"):
        export(iris_laplace[("all", "full")], iris.x_test[:4], tmp_path / "f.onnx")


@pytest.mark.parametrize("structure", ["diag", "full"])  # laplace-torch's kron rejects BatchNorm
def test_laplace_samples_batchnorm_affine_parameters(tmp_path, iris, structure):
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
    net = T.fit(net, iris.x_train, iris.y_train, "ce", steps=100)
    la = T.laplace(net, iris.x_train, iris.y_train, "classification", "all", structure)
    assert any(p is net[1].weight for p in la.params)
    res = export_model(la, iris.x_test[:16], tmp_path / "bn.onnx", verify_samples=400)
    assert res.fidelity.max_z < 5


def test_a_layernorm_parameter_is_named(tmp_path, iris):
    net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3))
    net = T.fit(net, iris.x_train, iris.y_train, "ce", steps=20)
    la = T.laplace(net, iris.x_train, iris.y_train, "classification", "all", "diag")
    with pytest.raises(UnsupportedLayerError, match=r"'1.weight' belongs to a LayerNorm"):
        export(la, iris.x_test[:4], tmp_path / "ln.onnx")


# --------------------------------------------------------------------------- WeightGaussian


def test_weight_gaussian_from_map_weights_and_a_factor(tmp_path, iris):
    """The trainer-independent route: MAP weights plus a covariance square root."""
    net = T.fit(T.mlp(4, 3), iris.x_train, iris.y_train, "ce", steps=300)
    head = torch.cat([net[2].weight.detach().reshape(-1), net[2].bias.detach()])
    g = torch.Generator().manual_seed(0)
    a = torch.randn(head.numel(), head.numel(), generator=g) * 0.05
    post = VectorGaussian(
        head, (DenseTerm(0, torch.linalg.cholesky(a @ a.T + 0.01 * torch.eye(51))),)
    )
    wg = WeightGaussian(net, post, last_layer="2")
    assert wg.param_names == ("2.weight", "2.bias")
    res = export_model(wg, iris.x_test[:16], tmp_path / "g.onnx", verify_samples=400)
    assert res.family == "gaussian" and "last layer '2'" in res.notes[0]
    assert res.fidelity.max_z < 5 and res.fidelity.spread_torch > 0.01


def test_graph_draws_have_a_weight_gaussians_covariance(tmp_path):
    net = nn.Sequential(nn.Linear(3, 2))
    g = torch.Generator().manual_seed(2)
    terms = (KronTerm(0, torch.linalg.qr(torch.randn(2, 2, generator=g))[0],
                      torch.linalg.qr(torch.randn(3, 3, generator=g))[0],
                      torch.rand(2, 3, generator=g) * 0.3 + 0.05),
             DiagTerm(6, torch.tensor([0.2, 0.05])))  # fmt: skip
    post = VectorGaussian(torch.randn(8, generator=g), terms)
    path = export(WeightGaussian(net, post), torch.zeros(4, 3), tmp_path / "w.onnx",
                  task="regression", verify=False)  # fmt: skip
    theta = T.linear_readout(path, 3, 20000)
    T.assert_moments(theta, post.mean.double().numpy(), post.covariance().numpy())


def test_terms_from_precision_factors():
    """The issue's form W = W_map + A^-1/2 E B^-1/2, and dense precisions/covariances."""
    g = torch.Generator().manual_seed(3)
    ra, rb = torch.randn(3, 3, generator=g), torch.randn(4, 4, generator=g)
    a, b = ra @ ra.T + torch.eye(3), rb @ rb.T + torch.eye(4)
    for delta in (0.0, 0.5):
        cov = VectorGaussian(torch.zeros(12), (KronTerm.from_precision(0, a, b, delta),))
        prec = torch.kron(a, b).double() + delta * torch.eye(12, dtype=torch.float64)
        torch.testing.assert_close(cov.covariance(), torch.linalg.inv(prec), rtol=1e-4, atol=1e-6)
    p = torch.kron(a, b).double()
    dense = VectorGaussian(torch.zeros(12), (DenseTerm.from_precision(0, p),))
    torch.testing.assert_close(dense.covariance(), torch.linalg.inv(p), rtol=1e-4, atol=1e-6)
    c = torch.linalg.inv(p)
    dense = VectorGaussian(torch.zeros(12), (DenseTerm.from_covariance(0, c),))
    torch.testing.assert_close(dense.covariance(), c, rtol=1e-4, atol=1e-7)


def test_weight_gaussian_errors():
    net = T.mlp(4, 3)
    post = VectorGaussian(torch.zeros(51), (DiagTerm(0, torch.ones(51)),))
    with pytest.raises(ConfigError, match="last_layer '1' is a Tanh; a last-layer posterior"):
        WeightGaussian(net, post, last_layer="1")
    with pytest.raises(ConfigError, match="the posterior has 51 parameters but 4 named"):
        WeightGaussian(net, post)
    with pytest.raises(ConfigError, match=r"cover \[\(0, 3\)\]: they must either tile \[0, 8\)"):
        VectorGaussian(torch.zeros(8), (DiagTerm(0, torch.ones(3)),))


# --------------------------------------------------------------------------- SWAG, SG-MCMC


def test_swag_moments_from_snapshots():
    net = nn.Sequential(nn.Linear(3, 2))
    g = torch.Generator().manual_seed(0)
    vecs = [torch.randn(8, generator=g) for _ in range(7)]
    post = SwagPosterior.from_snapshots(net, vecs, rank=4)
    stack = torch.stack(vecs).double()
    torch.testing.assert_close(post.mean.double(), stack.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(post.variance.double(), stack.var(0, unbiased=False), rtol=1e-4,
                               atol=1e-6)  # fmt: skip
    assert post.rank == 4
    torch.testing.assert_close(post.deviations[-1].double(), stack[-1] - stack.mean(0))
    # the oldest kept deviation is snapshot 3's, against the running mean after it
    torch.testing.assert_close(post.deviations[0].double(), stack[3] - stack[:4].mean(0))


def test_graph_draws_have_the_swag_covariance(tmp_path):
    net = nn.Sequential(nn.Linear(3, 2))
    g = torch.Generator().manual_seed(1)
    mean, var = torch.randn(8, generator=g), torch.rand(8, generator=g) * 0.05
    dev = torch.randn(5, 8, generator=g) * 0.3
    post = SwagPosterior(net, mean, var, dev, scale=0.5)
    path = export(post, torch.zeros(4, 3), tmp_path / "s.onnx", task="regression", verify=False)
    theta = T.linear_readout(path, 3, 20000)
    d = dev.double().numpy()
    exact = 0.5 * (np.diag(var.double().numpy()) + d.T @ d / 4)
    T.assert_moments(theta, mean.double().numpy(), exact)


@pytest.mark.parametrize("mode", ["weight", "frozen:6"])
def test_swag_export_matches_the_swag_sampler(tmp_path, dia, mode):
    net = T.mlp(10, 1)
    snaps = T.sgd_iterates(net, dia.x_train, dia.y_train, epochs=40, keep=20)
    post = SwagPosterior.from_snapshots(net, snaps, rank=10)
    res = export_model(post, dia.x_test[:16], tmp_path / "s.onnx", task="regression",
                       sampling=mode, verify_samples=400)  # fmt: skip
    assert res.family == "swag" and "rank 10" in res.notes[0]
    if mode == "weight":
        f = res.fidelity
        assert f.max_z < 5 and abs(f.spread_graph - f.spread_torch) <= 0.1 * f.spread_torch
    else:
        assert res.fidelity.exact


def test_swag_rejects_bad_shapes():
    net = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ConfigError, match=r"mean and variance must be \[P\] = \[8\]"):
        SwagPosterior(net, torch.zeros(7), torch.ones(7))
    with pytest.raises(ConfigError, match=r"deviations must be \[K, 8\]"):
        SwagPosterior(net, torch.zeros(8), torch.ones(8), torch.zeros(3, 5))
    with pytest.raises(ConfigError, match="at least 2 snapshots"):
        SwagPosterior.from_snapshots(net, [net.state_dict()])


def test_sgld_samples_export_exactly(tmp_path, dia):
    net = T.mlp(10, 1, hidden=16)
    states = T.sgld(net, dia.x_train, dia.y_train, n=8)
    assert not torch.equal(states[0]["0.weight"], states[-1]["0.weight"])
    res = export_model(WeightSamples(T.mlp(10, 1, hidden=16), states), dia.x_test[:8],
                       tmp_path / "g.onnx", task="regression")  # fmt: skip
    assert res.family == "ensemble" and res.fidelity.exact and res.notes == ("8 members",)
    bad = [states[0], {k: v for k, v in states[1].items() if k != "2.bias"}]
    with pytest.raises(ExportError, match=r"weight sample 1 does not fit the model: .*2\.bias"):
        export(WeightSamples(T.mlp(10, 1, hidden=16), bad), dia.x_test[:8], tmp_path / "b.onnx")


# --------------------------------------------------------------------------- quantization


@pytest.mark.parametrize("case", [("last_layer", "full"), ("last_layer", "kron"), ("all", "diag")],
                         ids=["ll-full", "ll-kron", "all-diag"])  # fmt: skip
def test_laplace_graphs_quantize_and_keep_the_posterior(tmp_path, iris, iris_laplace, case):
    """INC int8: the sampling MatMuls (noise times factor, sampled head) stay fp32 with their
    factors stored in 8 bits; accuracy and mean MI stay close to fp32 on the iris test split."""
    import onnx

    fp32 = export(iris_laplace[case], iris.x_test[:16], tmp_path / "f.onnx", seed=0)
    res = quantize_model(fp32, tmp_path / "q.onnx", QuantConfig(), calib=iris.x_train.numpy())
    q = onnx.load(str(res.path))
    ops = [n.op_type for n in q.graph.node]
    assert "QLinearMatMul" not in ops  # no noise became an int8 activation
    if case[0] == "last_layer":  # factors >= 256 values (all-diag's 163 scales stay fp32)
        assert res.int8_weights, "the posterior factors are stored in 8 bits"
    # iris-sized graphs: node structure outweighs the few weights now that exports carry no
    # tracing metadata (which had made the fp32 file 2-3x larger); int8 must not grow the file
    assert res.size_ratio <= 1.0, res.size_ratio
    x = iris.x_test.numpy()
    # S = 1024: all-diag's posterior is wide on iris (mean MI ~0.47 nats); at S = 64 the MC
    # noise alone flipped 5 of 40 predictions (INC left that graph without an int8 op)
    a = Predictor(fp32, seed=0).predict(x, 1024)
    b = Predictor(res.path, seed=1).predict(x, 1024)
    acc = [float((p.mean_probs.argmax(1) == iris.y_test.numpy()).mean()) for p in (a, b)]
    assert acc[0] >= 0.85 and abs(acc[0] - acc[1]) <= 0.05, acc
    ratio = b.mutual_information.mean() / a.mutual_information.mean()
    assert 0.8 <= ratio <= 1.25, ratio


# --------------------------------------------------------------------------- CLI


def test_cli_exports_a_laplace_factory(tmp_path):
    out = tmp_path / "la.onnx"
    args = ["export", "-m", "trainers:iris_laplace_factory", "--input-shape", "4", "-o", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "exported laplace (weight)" in res.output and "self-check (probs" in res.output
    bad = CliRunner().invoke(app, [*args[:-2], "-o", str(tmp_path / "w.onnx"), "--weights",
                                   str(out)])  # fmt: skip
    assert bad.exit_code != 0 and "--weights applies to a single module" in bad.output
    assert "Traceback" not in bad.output


def test_bad_posterior_terms_are_config_errors(tmp_path):
    net = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ConfigError, match="at least one term"):
        VectorGaussian(torch.zeros(8), ())
    with pytest.raises(ConfigError, match=r"term 0 \(DenseTerm\) has inconsistent shapes"):
        VectorGaussian(torch.zeros(8), (DenseTerm(0, torch.ones(8, 3)),))
    with pytest.raises(ConfigError, match=r"term 0 \(DiagTerm\) holds NaN or inf"):
        VectorGaussian(torch.zeros(8), (DiagTerm(0, torch.full((8,), float("inf"))),))
    with pytest.raises(ConfigError, match="is not positive definite"):
        DenseTerm.from_covariance(0, -torch.eye(8))
    with pytest.raises(ConfigError, match=r"not positive definite .* add a prior precision"):
        KronTerm.from_precision(0, torch.zeros(2, 2), torch.eye(4))
    with pytest.raises(ConfigError, match="needs K >= 2 deviations"):
        SwagPosterior(net, torch.zeros(8), torch.ones(8), torch.zeros(1, 8))
    with pytest.raises(ConfigError, match="rank must be 0 .* or >= 2; got 1"):
        SwagPosterior.from_snapshots(net, [net.state_dict()] * 3, rank=1)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"))
    post = VectorGaussian(torch.zeros(20), (DiagTerm(0, torch.ones(20)),))
    with pytest.raises(UnsupportedLayerError, match="padding_mode='reflect'"):
        export(WeightGaussian(conv, post), torch.zeros(2, 1, 4, 4), tmp_path / "c.onnx")


def test_a_non_finite_graph_fails_the_self_check(tmp_path):
    net = nn.Sequential(nn.Linear(3, 2))
    net[0].weight.data[0, 0] = float("nan")
    post = VectorGaussian(torch.zeros(2), (DiagTerm(0, torch.ones(2)),))
    with pytest.raises(VerificationError, match="non-finite values"):
        export(WeightGaussian(net, post, param_names=("0.bias",)), torch.ones(4, 3),
               tmp_path / "n.onnx", task="regression")  # fmt: skip
    assert not (tmp_path / "n.onnx").exists()
