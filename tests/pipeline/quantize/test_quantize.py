"""quantize: int8 ops and storage per sampling mode, posterior kept, errors, config round trip."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import pytest
import torch
import yaml
from scipy import stats
from typer.testing import CliRunner

from qbnn.exporters import export
from qbnn.pipeline.cli import app
from qbnn.pipeline.common import from_dict, load_config, to_dict
from qbnn.pipeline.quantize import AutotuneConfig, GuardConfig, QuantConfig, quantize_model
from qbnn.pipeline.run import digits
from qbnn.pipeline.validate import metrics
from qbnn.runtimes import Predictor
from qbnn.runtimes.errors import ConfigError, ModelLoadError, QuantizationError
from qbnn.runtimes.seeding import RANDOM_OPS

from tiny_models import UnitNoise

runner = CliRunner()
MODES = ["weight", "lrt", "frozen:4"]


@pytest.fixture(scope="module")
def trained():
    data = digits.load_split()
    torch.manual_seed(0)
    model = digits.train(digits.bayes_cnn(), data.x_train, data.y_train, epochs=15)
    return data, model


@pytest.fixture(scope="module")
def fp32(trained, tmp_path_factory):
    data, model = trained
    d = tmp_path_factory.mktemp("fp32")
    ex = torch.from_numpy(data.x_test[:8])
    return {
        m: export(model, ex, d / f"{m.replace(':', '_')}.onnx", sampling=m, verify=False)
        for m in MODES
    }


@pytest.fixture(scope="module")
def int8(fp32, trained, tmp_path_factory):
    data, _ = trained
    d = tmp_path_factory.mktemp("int8")
    out = {}
    for mode, path in fp32.items():
        for fmt in ("qoperator", "qdq"):
            out[(mode, fmt)] = quantize_model(
                path, d / f"{path.stem}.{fmt}.onnx", QuantConfig(format=fmt), calib=data.x_train
            )
    return out


def _ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _int8_inits(path) -> list[str]:
    return [
        t.name
        for t in onnx.load(str(path)).graph.initializer
        if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", ["qoperator", "qdq"])
def test_int8_ops_storage_and_size(int8, mode, fmt):
    res = int8[(mode, fmt)]
    ops = _ops(res.path)
    heavy_int8 = ops["QLinearConv"] + ops["QGemm"] + ops["QLinearMatMul"]
    if mode == "weight":
        # run-time weights W_s = mu + sigma * eps: mu and sigma are stored in 8 bits, and the
        # sample loop's convolutions run as QLinearConv on per-sample int8 weights
        stored = {"source.mu__conv2__weight", "source.sigma__conv2__weight",
                  "source.sigma__fc1__weight"}  # fmt: skip
        assert stored <= set(res.int8_weights), res.int8_weights
        assert any(n.startswith("source.sigma__") for n in _int8_inits(res.path))
        (scan,) = [n for n in onnx.load(str(res.path)).graph.node if n.op_type == "Scan"]
        body = next(a.g for a in scan.attribute if a.name == "body")
        body_ops = [n.op_type for n in body.node]
        assert "QLinearConv" in body_ops and "Conv" not in body_ops
    elif fmt == "qoperator":
        assert heavy_int8 > 0 and ops["Conv"] == 0 and ops["Gemm"] == 0
    else:
        assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert len(_int8_inits(res.path)) > 0
    assert ops["Softmax"] == 1, "the softmax/entropy tail stays fp32"
    assert (sum(ops[o] for o in RANDOM_OPS) > 0) == (mode != "frozen:4")
    # ResNet-20 target (0.30) is in benchmarks/. On this 20k-parameter CNN the graph's node
    # structure (Box-Muller, Q/DQ nodes, per-sample weight quantization) is a large share of the
    # file now that exports carry no tracing metadata, which had inflated the fp32 size (the
    # ratios here were 0.35-0.45 after that fix; 0.25 is about the int8/fp32 floor)
    assert res.size_ratio <= 0.5, res.size_ratio


@pytest.mark.parametrize("mode", MODES)
def test_fp32_agreement_and_uncertainty_kept(int8, fp32, trained, mode):
    """Digits test set, S=32, same seed: argmax agreement >= 0.97, |dECE| <= 0.01,
    mean MI within 0.7x-1.4x, logit spread within 0.8x-1.25x."""
    data, _ = trained
    res = int8[(mode, "qoperator")]
    a = Predictor(fp32[mode], seed=0).predict(data.x_test, 32)
    b = Predictor(res.path, seed=0).predict(data.x_test, 32)
    agree = np.mean(a.mean_probs.argmax(1) == b.mean_probs.argmax(1))
    assert agree >= 0.97
    assert (
        abs(metrics.ece(a.mean_probs, data.y_test) - metrics.ece(b.mean_probs, data.y_test)) <= 0.01
    )
    assert 0.7 <= b.mutual_information.mean() / a.mutual_information.mean() <= 1.4
    assert 0.8 <= res.spread.ratio <= 1.25


def test_int8_stays_stochastic_and_keeps_contract(int8, trained):
    data, _ = trained
    res = int8[("lrt", "qoperator")]
    p = Predictor(res.path)
    r1, r2 = p.predict(data.x_test[:16], 8, return_samples=True), p.predict(data.x_test[:16], 8)
    assert not np.array_equal(r1.mean_probs, r2.mean_probs)
    assert r1.probs.shape == (8, 16, 8)
    assert p.predict(data.x_test[:4], 3, return_samples=True).probs.shape[0] == 3  # S dynamic
    meta = {m.key: m.value for m in onnx.load(str(res.path)).metadata_props}
    assert meta["qbnn.precision"] == "int8" and meta["qbnn.sampling"] == "lrt"
    assert json.loads(meta["qbnn.quantization"])["backend"] == "inc"


@pytest.mark.parametrize("mode", ["weight", "lrt"])
def test_quantized_noise_is_standard_normal(tmp_path, mode):
    """Noise passes through int8 graphs unchanged: KS p > 1e-3 on 64 x 1000 draws."""
    x = torch.ones(1, 1)
    src = export(
        UnitNoise(), x, tmp_path / "n.onnx", sampling=mode, task="regression", verify=False
    )
    calib = np.ones((64, 1), np.float32) * np.linspace(0.5, 1.5, 64, dtype=np.float32)[:, None]
    res = quantize_model(src, tmp_path / "n8.onnx", QuantConfig(), calib=calib)
    z = (
        Predictor(res.path, seed=4)
        .predict(np.ones((1, 1), np.float32), 1000, return_samples=True)
        .samples.ravel()
    )
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.std() - 1) < 0.02


def test_deterministic_plain_model_quantizes(trained, tmp_path):
    data, _ = trained
    path = tmp_path / "det.onnx"
    torch.onnx.export(
        digits.det_cnn().eval(),
        (torch.from_numpy(data.x_test[:4]),),
        str(path),
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("b")},),
    )
    cfg = QuantConfig(format="qoperator")  # auto would pick QDQ where OpenVINO is installed
    res = quantize_model(path, tmp_path / "det8.onnx", cfg, calib=data.x_train)
    assert _ops(res.path)["QLinearConv"] == 2 and res.spread is None
    assert Predictor(res.path).predict(data.x_test[:5]).mean_probs.shape == (5, 8)


# ------------------------------------------------------------------ posterior erasure


@pytest.fixture(scope="module")
def narrow(trained, tmp_path_factory):
    """The trained BNN with sigma ~ 6e-6: its noise sits far below the int8 step."""
    data, model = trained
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "rho" in name:
                p.fill_(-12.0)
    d = tmp_path_factory.mktemp("narrow")
    return export(
        m, torch.from_numpy(data.x_test[:8]), d / "narrow.onnx", sampling="lrt", verify=False
    )


def test_erased_posterior_fails_naming_layers(narrow, trained, tmp_path):
    data, _ = trained
    cfg = QuantConfig(guard=GuardConfig(on_erasure="fail"))
    with pytest.raises(QuantizationError, match=r"does not keep the posterior.*node_\w+ \(noise"):
        quantize_model(narrow, tmp_path / "x.onnx", cfg, calib=data.x_train)
    assert not (tmp_path / "x.onnx").exists()


def test_erased_posterior_keeps_noise_path_in_fp32(narrow, trained, tmp_path):
    data, _ = trained
    res = quantize_model(narrow, tmp_path / "x.onnx", QuantConfig(), calib=data.x_train)
    assert res.kept_fp32 and all(k.startswith("node_") for k in res.kept_fp32)
    assert 0.8 <= res.spread.ratio <= 1.25
    meta = {m.key: m.value for m in onnx.load(str(res.path)).metadata_props}
    assert json.loads(meta["qbnn.quantization"])["kept_fp32"] == list(res.kept_fp32)


# ------------------------------------------------------------------ autotune


def test_autotune_on_ece(fp32, trained, tmp_path):
    data, _ = trained
    val = tmp_path / "val.npz"
    np.savez(val, x=data.x_test[:120], y=data.y_test[:120])
    tune = AutotuneConfig(metric="ece", tolerable_loss=0.02, data=str(val))
    cfg = QuantConfig(format="qoperator", autotune=tune)  # QLinearConv: the QOperator form
    res = quantize_model(fp32["lrt"], tmp_path / "t.onnx", cfg, calib=data.x_train)
    assert _ops(res.path)["QLinearConv"] > 0


# ------------------------------------------------------------------ configs and errors


CONFIGS = [
    QuantConfig(),
    QuantConfig(backend="ort", format="qdq", per_channel=False, exclude_nodes=("node_conv*",)),
    QuantConfig(
        guard=GuardConfig(on_erasure="fail", min_spread_ratio=0.7),
        autotune=AutotuneConfig(metric="nll", data="v.npz"),
    ),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_config_round_trip(cfg, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(QuantConfig, path) == cfg
    (tmp_path / "c.json").write_text(json.dumps(to_dict(cfg)))
    assert load_config(QuantConfig, tmp_path / "c.json") == cfg


@pytest.mark.parametrize("name", ["inc_qoperator.yaml", "inc_qdq.yaml", "inc_autotune_ece.yaml"])
def test_shipped_example_configs_load(name):
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    assert isinstance(load_config(QuantConfig, root / "examples" / "configs" / name), QuantConfig)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"formatt": "qdq"}, "unknown key 'formatt'; valid keys: backend, format"),
        ({"calibration": {"sise": 3}}, "unknown key 'calibration.sise'"),
        (
            {"autotune": {"metric": "f1"}},
            "'autotune.metric' is 'f1'; valid choices: accuracy, nll, ece",
        ),
        ({"per_channel": "yes"}, "'per_channel' must be of type bool"),
        ({"calibration": {"num_samples": 2}}, "num_samples must be >= 8"),
        ({"op_types": ["Conv"], "exclude_op_types": ["Conv"]}, "no op type left"),
    ],
)
def test_config_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(QuantConfig, data)


def test_calibration_errors(fp32, tmp_path):
    with pytest.raises(ConfigError, match=r"calibration data shape \[5, 1, 9, 9\] does not match"):
        quantize_model(fp32["lrt"], tmp_path / "x.onnx", calib=np.zeros((5, 1, 9, 9), np.float32))
    with pytest.raises(ConfigError, match="calibration set is empty"):
        quantize_model(fp32["lrt"], tmp_path / "x.onnx", calib=np.zeros((0, 1, 8, 8), np.float32))
    bad = tmp_path / "m.onnx"
    bad.write_text("not onnx")
    with pytest.raises(ModelLoadError, match="is not an ONNX model"):
        quantize_model(bad, tmp_path / "x.onnx", calib=np.zeros((4, 1, 8, 8), np.float32))
    assert not (tmp_path / "x.onnx").exists()


def test_cli_quantize(fp32, trained, tmp_path):
    data, _ = trained
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=data.x_train[:128])
    out = tmp_path / "q.onnx"
    r = runner.invoke(
        app,
        ["quantize", str(fp32["lrt"]), "--calib", str(calib), "--format", "qdq", "-o", str(out)],
    )
    assert r.exit_code == 0, r.output
    assert out.is_file() and "posterior kept" in r.output
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("calibration:\n  methd: minmax\n")
    r = runner.invoke(
        app,
        [
            "quantize",
            str(fp32["lrt"]),
            "--calib",
            str(calib),
            "--config",
            str(cfg),
            "-o",
            str(tmp_path / "q2.onnx"),
        ],
    )
    assert r.exit_code == 1 and "unknown key 'calibration.methd'" in r.output
    np.savez(calib, y=np.zeros(3))
    r = runner.invoke(
        app, ["quantize", str(fp32["lrt"]), "--calib", str(calib), "-o", str(tmp_path / "q3.onnx")]
    )
    assert r.exit_code == 1 and "lacks key(s) ['x']" in r.output
