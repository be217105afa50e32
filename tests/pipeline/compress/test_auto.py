"""Plans from the posterior and the gated search for the smallest relative BOPs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from qbnn.pipeline.compress import AutoConfig, auto_plan, compress
from qbnn.pipeline.compress.auto import channel_snr, layer_bits
from qbnn.pipeline.validate import Gates, ValidateConfig
from qbnn.runtimes.errors import ConfigError, QuantizationError

VCFG = ValidateConfig(num_samples=2, bootstrap=0, mc_repeats=0, provider="cpu")


@pytest.mark.parametrize(
    ("fraction", "bits"), [(10.0, 2), (1.0, 4), (0.01, 8), (1e-6, 16), (1e-12, 16)]
)
def test_bits_rule_step_noise_vs_posterior_variance(fraction, bits):
    # max|mu_c| = 1 in both channels: step^2/12 = 1/12 (2 bits), (1/7)^2/12 (4), (1/127)^2/12
    # (8), (1/32767)^2/12 (16); posterior variance 0.01
    mu = np.array([[1.0, 0.2], [-1.0, 0.5]], np.float32)
    sigma = np.full_like(mu, 0.1)
    assert layer_bits(mu, sigma, fraction) == bits


def test_channel_snr_and_pruning_rule(ensemble_model):
    src, _ = ensemble_model
    mu = np.array([[3.0, 4.0], [0.1, 0.0]], np.float32)
    sigma = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    np.testing.assert_allclose(channel_snr(mu, sigma), [5.0, 0.1])
    plan = auto_plan(onnx.load(src), 1.0, snr=1e9)  # every channel is below: half are pruned
    assert plan.layer("conv1").prune_channels and len(plan.layer("conv1").prune_channels) == 2
    assert plan.layer("fc2").prune_channels == ()  # the logits layer is never pruned
    assert {lp.act_bits for lp in plan.layers.values()} == {8}


def test_search_returns_the_smallest_bops_that_passes(ensemble_model, arrays, tmp_path):
    src, _ = ensemble_model
    out = compress(
        src, tmp_path / "auto.onnx", auto=AutoConfig(fractions=(1e-4, 1e3), snr=(0.0,), explore=1),
        calib=arrays["calib"], data=arrays["test"], ood=arrays["ood"],
        validate_config=VCFG, report_dir=tmp_path / "rep",
    )  # fmt: skip
    trials = list(out.trials)
    validated = [t for t in trials if t.passed is not None]
    first = next(i for i, t in enumerate(validated) if t.passed)
    assert all(not t.passed for t in validated[:first])
    validated = validated[: first + 1]
    assert [t.relative_bops for t in validated] == sorted(t.relative_bops for t in validated)
    assert out.result.relative_bops == validated[-1].relative_bops
    assert out.gates_passed  # re-validated with the full config
    rec = json.loads((tmp_path / "rep" / "compress.json").read_text())
    assert {"relative_bops", "unique_weights", "size_bytes", "gates_passed"} <= set(rec)
    assert rec["relative_bops"] == pytest.approx(out.result.relative_bops)
    assert (tmp_path / "rep" / "search.png").stat().st_size > 0
    assert (tmp_path / "rep" / "plan.yaml").is_file()


def test_search_honours_gates_that_nothing_passes(ensemble_model, arrays, tmp_path):
    src, _ = ensemble_model
    gates = Gates(max_abs_ece_delta=0.0, mi_ratio_min=1.0, mi_ratio_max=1.0)
    strict = ValidateConfig(num_samples=2, bootstrap=0, mc_repeats=0, provider="cpu", gates=gates)
    with pytest.raises(QuantizationError, match="no plan passed the validate gates"):
        compress(src, tmp_path / "none.onnx", auto=AutoConfig(fractions=(1e3,), snr=(0.0,)),
                 calib=arrays["calib"], data=arrays["test"], validate_config=strict)  # fmt: skip
    assert not (tmp_path / "none.onnx").exists()


def test_auto_config_errors():
    with pytest.raises(ConfigError, match="--budget: 3.0 must be a relative BOPs fraction"):
        AutoConfig(budget=3.0)
    with pytest.raises(ConfigError, match="auto.fractions"):
        AutoConfig(fractions=(0.0,))
