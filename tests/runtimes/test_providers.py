"""Every provider, including native OpenVINO: noise distribution, seeding contract,
``num_samples``, int8 formats, precision, and the registry's errors.

Statistical checks use fixed export and session seeds and state their tolerances.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from qbnn.exporters import export
from qbnn.runtimes import Predictor, SessionOptions, available_providers, open_model
from qbnn.runtimes.errors import ConfigError, ModelLoadError, RuntimeInputError
from qbnn.runtimes.options import Precision, effective_precision

from tiny_models import CASES, UnitNoise, example

PROVIDERS = available_providers()


def _bf16_here() -> bool:
    if "openvino" not in PROVIDERS:
        return False
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


BF16 = _bf16_here()
needs_openvino = pytest.mark.skipif("openvino" not in PROVIDERS, reason="openvino not installed")
#: (provider, precision) runs: fp32 everywhere, bf16 on OpenVINO where the CPU has it
RUNS = [pytest.param(p, "fp32", id=f"{p}-fp32") for p in PROVIDERS] + [
    pytest.param(
        "openvino", "bf16", id="openvino-bf16",
        marks=pytest.mark.skipif(not BF16, reason="no bf16 here (OpenVINO CPU lacks BF16)"),
    )
]  # fmt: skip


@pytest.fixture(scope="module")
def noise_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("noise")
    x = torch.ones(1, 1)
    return {
        mode: export(
            UnitNoise(),
            x,
            d / f"{mode}.onnx",
            sampling=mode,
            task="regression",
            seed=11,
            verify=False,
        )  # fmt: skip
        for mode in ("weight", "lrt")
    }


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """Tiny Bayesian CNN: ``lrt`` (default S = 6), ``frozen:4`` and its int8 QDQ / QOperator."""
    from qbnn.pipeline.quantize import QuantConfig, quantize_model

    d = tmp_path_factory.mktemp("cnn")
    fac, shape = CASES["meanfield-cnn"]
    out = {
        "lrt": export(fac(), example(shape), d / "lrt.onnx", num_samples=6, verify=False),
        "frozen": export(fac(), example(shape), d / "f.onnx", sampling="frozen:4", verify=False),
    }
    calib = example(shape, batch=64, seed=3).numpy()
    for fmt in ("qdq", "qoperator"):
        cfg = QuantConfig(format=fmt)
        out[fmt] = quantize_model(out["frozen"], d / f"f.{fmt}.onnx", cfg, calib=calib).path
    return out


def x_img(n=5, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)


# ------------------------------------------------------------------ noise and posteriors


@pytest.mark.parametrize(("provider", "precision"), RUNS)
@pytest.mark.parametrize("mode", ["weight", "lrt"])
def test_noise_is_standard_normal(noise_models, provider, precision, mode):
    """64 x 1000 draws; KS test against N(0,1) at p > 1e-3, |mean| < 0.02, |std - 1| < 0.02
    (standard errors are 0.004 and 0.003)."""
    pred = Predictor(noise_models[mode], provider=provider, seed=3, precision=precision)
    res = pred.predict(np.ones((1, 1), np.float32), 1000, return_samples=True)
    z = res.samples.ravel().astype(np.float64)
    assert z.size == 64_000
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1.0) < 0.02
    # tails: Box-Muller must reach beyond 3 sigma at the normal rate (0.27%)
    assert 0.0015 < np.mean(np.abs(z) > 3) < 0.004


@pytest.mark.parametrize(("provider", "precision"), RUNS)
@pytest.mark.parametrize(
    ("case", "sampling"),
    [("meanfield-mlp", None), ("flipout-cnn", "flipout"), ("mcdropout-mlp", None)],
)
def test_mc_means_agree_with_cpu(tmp_path, provider, precision, case, sampling):
    """MC means over S=1500 on ``provider`` vs the CPU provider: every element within 5 SE
    (plus 1e-4, or 0.01 in bf16); mean per-element spread within 10 %."""
    factory, shape = CASES[case]
    path = export(
        factory(), example(shape), tmp_path / "m.onnx", seed=21, verify=False, sampling=sampling
    )
    x = example(shape, batch=3, seed=8).numpy()
    pred = Predictor(path, provider=provider, seed=1, precision=precision)
    a = pred.predict(x, 1500, return_samples=True)
    b = Predictor(path, provider="cpu", seed=2).predict(x, 1500, return_samples=True)
    se = np.sqrt((a.probs.var(0) + b.probs.var(0)) / 1500)
    slack = 1e-4 if pred.compute_precision == Precision.FP32 else 0.01
    assert np.all(np.abs(a.mean_probs - b.mean_probs) <= 5 * se + slack)
    assert abs(a.probs.std(0).mean() - b.probs.std(0).mean()) < 0.1 * b.probs.std(0).mean()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("layout", ["tiled", "summed"])
def test_weight_posterior_draws_on_every_provider(tmp_path, provider, layout):
    """In-graph draws of a weight posterior (Kronecker + diagonal terms concatenated, or
    SWAG-style diagonal + low-rank terms summed) have the exact mean and covariance: 20,000
    draws, every entry within 5 standard errors."""
    from torch import nn

    from qbnn.exporters import (
        DiagTerm,
        KronTerm,
        LowRankTerm,
        VectorGaussian,
        WeightGaussian,
    )

    from trainers import assert_moments, linear_readout

    g = torch.Generator().manual_seed(5)
    if layout == "tiled":
        q1 = torch.linalg.qr(torch.randn(2, 2, generator=g))[0]
        q2 = torch.linalg.qr(torch.randn(3, 3, generator=g))[0]
        m = torch.rand(2, 3, generator=g) * 0.3 + 0.05
        terms = (KronTerm(0, q1, q2, m), DiagTerm(6, torch.tensor([0.2, 0.05])))
    else:
        terms = (DiagTerm(0, torch.rand(8, generator=g) * 0.1),
                 LowRankTerm(0, torch.randn(4, 8, generator=g) * 0.2))  # fmt: skip
    post = VectorGaussian(torch.randn(8, generator=g), terms)
    path = export(WeightGaussian(nn.Sequential(nn.Linear(3, 2)), post), torch.zeros(4, 3),
                  tmp_path / "w.onnx", task="regression", verify=False)  # fmt: skip
    theta = linear_readout(path, 3, 20000, provider=provider)
    assert_moments(theta, post.mean.double().numpy(), post.covariance().numpy())


# ------------------------------------------------------------------ seeding contract


@pytest.mark.parametrize("provider", PROVIDERS)
def test_seed_replays_the_same_calls_and_each_call_is_fresh(cnn, provider):
    """``seed=N``: a second session replays the first one's sequence of calls exactly, and
    consecutive calls differ; ``seed=None``: every call and every session differs."""
    x = x_img()

    def calls(seed):
        p = Predictor(cnn["lrt"], provider=provider, seed=seed)
        return [p.predict(x, 4, return_samples=True).probs for _ in range(3)]

    a, b = calls(5), calls(5)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[1], a[2])
    assert not np.array_equal(a[0], calls(6)[0])
    fresh = calls(None) + calls(None)
    assert len({f.tobytes() for f in fresh}) == len(fresh)


# ------------------------------------------------------------------ num_samples


@pytest.mark.parametrize("provider", PROVIDERS)
def test_num_samples_is_an_input_and_honoured(cnn, provider):
    """Contract format 2 (issue 24): every provider's session lists ``num_samples`` as an int64
    scalar input that the caller feeds (omitting it is refused the same way on each), any fed
    value is honoured, and the Predictor feeds the export-time default (6) when a call names
    none."""
    opened = open_model(cnn["lrt"], SessionOptions(provider=provider), seed=0)
    args = {a.name: a for a in opened.session.get_inputs()}
    assert sorted(args) == ["input", "num_samples"] and list(args["num_samples"].shape) == []
    x = x_img(2)
    with pytest.raises((ValueError, RuntimeInputError), match="num_samples"):
        opened.session.run(["probs"], {"input": x})
    for s in (3, 40):
        fed = {"input": x, "num_samples": np.array(s, np.int64)}
        assert opened.session.run(["probs"], fed)[0].shape == (s, 2, 4)
    pred = Predictor(cnn["lrt"], provider=provider, seed=0)
    assert pred.predict(x).num_samples == 6
    assert pred.predict(x, 11, return_samples=True).probs.shape == (11, 2, 4)


@needs_openvino
def test_openvino_lists_num_samples_among_its_inputs(cnn):
    opened = open_model(cnn["lrt"], SessionOptions(provider="openvino"), seed=0)
    args = {a.name: a for a in opened.session.get_inputs()}
    assert set(args) == {"input", "num_samples"}
    assert args["num_samples"].shape == [] and args["num_samples"].type == "i64"


# ------------------------------------------------------------------ int8 formats


@pytest.mark.parametrize("provider", PROVIDERS)
def test_int8_qdq_runs_on_every_provider(cnn, provider):
    """The QDQ graph runs everywhere, reports int8, and agrees with the CPU provider's int8
    within 0.03 per probability (frozen draws are deterministic; kernels round differently)."""
    pred = Predictor(cnn["qdq"], provider=provider)
    assert pred.precision == "int8"
    ref = Predictor(cnn["qdq"], provider="cpu").predict(x_img(), 4).mean_probs
    np.testing.assert_allclose(pred.predict(x_img(), 4).mean_probs, ref, atol=0.03)


@needs_openvino
def test_qoperator_on_openvino_is_one_line_naming_format_and_fix(cnn):
    with pytest.raises(ModelLoadError, match=r"int8 QOperator graph \(.*QLinearConv.*\).*"
                       r"re-quantize it with quant_format QDQ") as err:  # fmt: skip
        Predictor(cnn["qoperator"], provider="openvino")
    assert "\n" not in str(err.value)


def test_quantize_format_auto_follows_the_provider_auto_picks(cnn, tmp_path):
    """``format: auto`` gives QDQ exactly where ``auto`` would run the int8 graph on OpenVINO."""
    import onnx

    from qbnn.pipeline.quantize import QuantConfig, quantize_model
    from qbnn.runtimes.autorule import int8_format

    calib = example((1, 8, 8), batch=64, seed=3).numpy()
    path = quantize_model(cnn["frozen"], tmp_path / "a.onnx", QuantConfig(format="auto"),
                          calib=calib).path  # fmt: skip
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    want = int8_format(onnx.load(str(cnn["frozen"])))
    assert ("QLinearConv" in ops) == (want == "qoperator") and "QuantizeLinear" in ops
    assert Predictor(path, provider="auto").precision == "int8"


@needs_openvino
def test_auto_falls_back_when_openvino_cannot_convert(cnn):
    """``auto`` never fails on a graph the CPU provider runs; it records why it moved on."""
    pred = Predictor(cnn["qoperator"], provider="auto")
    assert pred.provider == "cpu" and pred.precision == "int8"
    assert all("QOperator" in f for f in pred.fallbacks)


# ------------------------------------------------------------------ precision


@needs_openvino
def test_bf16_is_asked_for_and_reported(cnn):
    """Precision is explicit: fp32 unless asked; a bf16 session says so (fp32 when the CPU
    cannot run bf16: OpenVINO falls back and the session reports what it really runs)."""
    assert Predictor(cnn["lrt"], provider="openvino").precision == "fp32"
    pred = Predictor(cnn["lrt"], provider="openvino", precision="bf16")
    assert pred.compute_precision == (Precision.BF16 if BF16 else Precision.FP32)
    assert pred.precision == ("bf16" if BF16 else "fp32")
    int8 = Predictor(cnn["qdq"], provider="openvino", precision="BF16")
    assert int8.precision == ("int8+bf16" if BF16 else "int8")
    assert Predictor(cnn["lrt"], precision="bf16").provider == "openvino"  # auto honours it


@needs_openvino
def test_validate_runs_candidates_in_the_asked_precision(cnn):
    """The reference runs fp32, candidates in ``precision``; the report says what ran."""
    from qbnn.pipeline.validate import ValidateConfig, validate

    data = {"x": x_img(20), "y": np.arange(20) % 4}
    cfg = ValidateConfig(num_samples=4, bootstrap=0, mc_repeats=0, provider="openvino",
                         precision="bf16")  # fmt: skip
    report = validate({"ref": cnn["lrt"], "cand": cnn["lrt"]}, data, config=cfg)
    info = {m.name: m.info for m in report.models}
    assert info["ref"]["precision"] == "fp32" and info["ref"]["provider"] == "openvino"
    assert info["cand"]["precision"] == ("bf16" if BF16 else "fp32")


@pytest.mark.parametrize(
    ("model", "compute", "expected"),
    [("fp32", "fp32", "fp32"), ("int8", "fp32", "int8"), ("unknown", "fp32", "fp32"),
     ("fp32", "bf16", "bf16"), ("int8", "bf16", "int8+bf16")],
)  # fmt: skip
def test_effective_precision(model, compute, expected):
    assert effective_precision(model, Precision(compute)) == expected


def test_precision_errors(cnn):
    with pytest.raises(ConfigError, match=r"provider 'cpu' runs fp32 only, got precision 'bf16'"):
        Predictor(cnn["lrt"], provider="cpu", precision="bf16")
    with pytest.raises(ConfigError, match=r"unknown precision 'fp16'; valid: fp32, bf16"):
        SessionOptions(precision="fp16")
