"""The validate stage on real exported digits models: report schema, plots, gates, bad inputs.

Models (built once per module, about 20 s on 2 cores): a Bayesian CNN trained briefly on digits
0-7, its export with seed 0, the same network with every posterior sigma zeroed (rho = -50, so
softplus(rho) ~ 0: a "quantized away" posterior), and a deterministic twin exported as a plain
ONNX file without qbnn metadata (run as S = 1).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from qbnn.exporters import export
from qbnn.pipeline.cli import app
from qbnn.pipeline.run import digits
from qbnn.pipeline.validate import ValidateConfig, gate_table, validate, write_report
from qbnn.pipeline.validate import evaluation as E
from qbnn.pipeline.validate import metrics as M
from qbnn.pipeline.validate.gates import gate_specs
from qbnn.runtimes import Predictor
from qbnn.runtimes.errors import ConfigError, ModelLoadError, RuntimeInputError

runner = CliRunner()
SAMPLES = 16
PLOTS = {"reliability.png", "entropy_hist.png", "referral.png", "ood_roc.png"}
FAST = {"num_samples": 8, "bootstrap": 20, "mc_repeats": 1, "threads": 1}


def _plain_onnx(path, feature_shape, n_classes):
    """A plain (non-qbnn) ONNX classifier: Flatten -> MatMul, ``[B, *F] -> [B, C]`` logits."""
    n = int(np.prod(feature_shape))
    w = np.random.default_rng(0).standard_normal((n, n_classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", *feature_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", n_classes])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


def _zero_sigma(model):
    """A copy whose posterior std softplus(rho) is ~0 in every Bayesian layer."""
    broken = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in broken.named_parameters():
            if name.split(".")[-1].startswith("rho"):
                p.fill_(-50.0)
    return broken


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    d = tmp_path_factory.mktemp("digits")
    split = digits.load_split()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread is faster and immune to busy cores
    try:
        bnn = digits.train(digits.bayes_cnn(), split.x_train, split.y_train, epochs=15)
        ex = torch.from_numpy(split.x_test[:4])
        fp32 = export(bnn, ex, d / "fp32.onnx", verify=False, seed=0)
        zeroed = export(_zero_sigma(bnn), ex, d / "zeroed.onnx", verify=False, seed=0)
        det = digits.train(digits.det_cnn(), split.x_train, split.y_train, epochs=15)
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                det,
                (ex,),
                str(d / "det.onnx"),
                dynamo=True,
                input_names=["pixels"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
    finally:
        torch.set_num_threads(threads)
    np.savez(d / "test.npz", x=split.x_test, y=split.y_test)
    np.savez(d / "ood.npz", x=split.x_ood)
    return SimpleNamespace(
        dir=d,
        fp32=fp32,
        zeroed=zeroed,
        det=d / "det.onnx",
        test=d / "test.npz",
        ood=d / "ood.npz",
        split=split,
    )


@pytest.fixture(scope="module")
def cli_run(dm, tmp_path_factory):
    """One full CLI run: fp32 reference, zeroed-sigma candidate, plain baseline, OOD data."""
    out = tmp_path_factory.mktemp("report")
    args = [
        "validate",
        "--model",
        str(dm.fp32),
        "--model",
        str(dm.zeroed),
        "--baseline",
        str(dm.det),
        "--data",
        str(dm.test),
        "--ood",
        str(dm.ood),
        "--samples",
        str(SAMPLES),
        "--seed",
        "0",
        "--threads",
        "1",
        "--bootstrap",
        "50",
        "-o",
        str(out),
    ]
    result = runner.invoke(app, args)
    report = json.loads((out / "report.json").read_text())
    return SimpleNamespace(result=result, out=out, report=report)


def test_cli_writes_report_schema_and_every_plot(cli_run):
    rep, out = cli_run.report, cli_run.out
    assert set(rep) == {
        "version",
        "passed",
        "task",
        "config",
        "seeds",
        "sample_counts",
        "data",
        "reference",
        "models",
        "gates",
        "failed_gates",
        "plots",
        "notes",
        "warnings",
    }
    low = {  # a warning exactly for the models with an OOD AUROC below 0.5
        m["name"]
        for m in rep["models"]
        for k in ("ood_auroc_entropy", "ood_auroc_mi")
        if m["metrics"].get(k) is not None and m["metrics"][k] < 0.5
    }
    assert {w.split(":")[0] for w in rep["warnings"]} == low and "fp32" not in low
    assert rep["version"] == "1" and rep["task"] == "classification"
    assert rep["seeds"] == {"main": 0, "mc": [0, 1, 2], "bootstrap": 0}
    assert rep["config"]["num_samples"] == SAMPLES and rep["config"]["gates"]["mi_ratio_min"]
    sc = rep["sample_counts"]
    assert (sc["n"], sc["n_ood"], sc["bootstrap"], sc["mc_runs"]) == (433, 354, 50, 3)
    assert sc["num_samples"] == {"fp32": SAMPLES, "zeroed": SAMPLES, "det": 1}
    assert rep["data"]["num_classes"] == 8 and rep["data"]["feature_shape"] == [1, 8, 8]
    assert [(m["name"], m["role"]) for m in rep["models"]] == [
        ("fp32", "reference"),
        ("zeroed", "candidate"),
        ("det", "baseline"),
    ]
    for m in rep["models"]:
        assert set(m) >= {"info", "metrics", "deltas", "intervals", "mc_noise", "curves"}
        assert set(m["curves"]) == {
            "reliability",
            "referral",
            "entropy_hist",
            "roc_entropy",
            "roc_mi",
        }
        lo, hi = m["intervals"]["accuracy"]
        assert lo <= m["metrics"]["accuracy"] <= hi
        assert set(m["metrics"]) >= {
            "nll",
            "brier",
            "ece_equal_mass",
            "mce",
            "aurc",
            "referral_needed@0.995",
            "entropy_correct",
            "mi_wrong",
            "ood_aupr_entropy",
        }
        # issue 24, item 4: MI ranks nothing with one sample (0 everywhere: AUROC 0.5 by ties)
        bayes = m["name"] != "det"
        assert ("ood_auroc_mi" in m["metrics"]) == ("ood_aupr_mi" in m["metrics"]) == bayes
    assert list(rep["gates"]) == ["zeroed"]  # the baseline is not gated
    assert len(rep["models"][0]["mc_noise"]["accuracy"]["values"]) == 3
    assert rep["models"][0]["mc_noise"]["accuracy"]["spread"] is not None
    det_noise = rep["models"][2]["mc_noise"]["accuracy"]
    assert len(det_noise["values"]) == 1 and det_noise["spread"] is None  # deterministic
    assert set(rep["plots"]) == PLOTS
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| metric | fp32 (reference) | zeroed (candidate) | det (baseline) |" in md
    assert re.search(r"^\| ood_auroc_mi \| 0\.\d{4} \[.*\| —(?: \(\S+\))? \|$", md, re.M), md
    mc = md[md.index("## MC noise") :]
    (acc,) = [line for line in mc.splitlines() if line.startswith("| accuracy |")]
    assert re.fullmatch(r"\| accuracy \| \d\.\d{4} \| \d\.\d{4} \| — \|", acc), acc
    assert "mi_ratio" in md and "![ood_roc.png](ood_roc.png)" in md
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_run_summary_shows_no_mi_auroc_for_the_baseline(cli_run, tmp_path):
    """Issue 24, item 4: the demo's summary showed the deterministic baseline's OOD AUROC (MI)
    as 0.5000 (all-tied zeros); it is '-' (not applicable), the Bayesian models keep theirs."""
    from qbnn.pipeline.run import summary_rows

    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.json").write_text(json.dumps(cli_run.report))
    rows = {r["model"]: r for r in summary_rows(tmp_path)}
    assert rows["det"]["ood_auroc_mi"] == "-"
    assert re.fullmatch(r"0\.\d{4}", rows["fp32"]["ood_auroc_mi"])
    assert re.fullmatch(r"0\.\d{4}", rows["det"]["ood_auroc_entropy"])


def test_zeroed_posterior_fails_the_mi_gates(cli_run):
    r, rep = cli_run.result, cli_run.report
    assert r.exit_code == 1, r.output
    assert "FAILED gate mi_ratio (zeroed)" in r.output
    assert rep["passed"] is False
    gates = {g["name"]: g for g in rep["gates"]["zeroed"]}
    assert gates["mi_ratio"]["status"] == "FAIL" and gates["mi_ratio"]["value"] < 0.01
    assert gates["ood_auroc_mi_drop"]["status"] == "FAIL"
    assert gates["accuracy_drop"]["status"] == "pass"  # accuracy alone would not notice
    assert {f["gate"] for f in rep["failed_gates"]} == {"mi_ratio", "ood_auroc_mi_drop"}
    fp32, zeroed = (m["metrics"] for m in rep["models"][:2])
    assert zeroed["mean_mi"] < 1e-3 * fp32["mean_mi"]
    assert fp32["ood_auroc_mi"] > 0.8 and zeroed["ood_auroc_mi"] < 0.65
    assert abs(zeroed["accuracy"] - fp32["accuracy"]) < 0.03


def test_report_equals_direct_computation_from_the_predictor(cli_run, dm):
    s = dm.split
    for m in cli_run.report["models"]:
        path = {"fp32": dm.fp32, "zeroed": dm.zeroed, "det": dm.det}[m["name"]]
        pred = Predictor(path, seed=0, threads=1)
        n = SAMPLES if pred.info.is_qbnn else None
        r, o = pred.predict(s.x_test, n), pred.predict(s.x_ood, n)
        correct = r.mean_probs.argmax(1) == s.y_test
        expected = {
            "accuracy": M.accuracy(r.mean_probs, s.y_test),
            "nll": M.nll(r.mean_probs, s.y_test),
            "brier": M.brier(r.mean_probs, s.y_test),
            "ece": M.ece(r.mean_probs, s.y_test, 15),
            "ece_equal_mass": M.ece_equal_mass(r.mean_probs, s.y_test, 15),
            "aurc": M.aurc(r.predictive_entropy, correct),
            "referral_needed@0.99": M.referral_needed(r.predictive_entropy, correct, 0.99),
            "mean_mi": float(np.mean(r.mutual_information, dtype=np.float64)),
            "ood_auroc_entropy": M.auroc(o.predictive_entropy, r.predictive_entropy),
        }
        if pred.info.is_qbnn:  # the plain baseline's MI is 0 everywhere: no MI ranking
            expected["ood_auroc_mi"] = M.auroc(o.mutual_information, r.mutual_information)
            expected["ood_aupr_mi"] = M.aupr(o.mutual_information, r.mutual_information)
        for key, value in expected.items():
            assert m["metrics"][key] == pytest.approx(value, abs=1e-12), (m["name"], key)


def test_identical_models_pass_and_ood_gates_are_skipped(dm, cli_run, tmp_path):
    cfg = ValidateConfig(**FAST)
    report = validate({"a": dm.fp32, "b": dm.fp32}, dm.test, config=cfg)
    assert report.passed
    gates = {g.name: g for g in report.gates["b"]}
    for name in ("accuracy_drop", "ece_delta", "referral99_increase", "mi_ratio"):
        assert gates[name].passed is True and gates[name].within_noise is True
        # the same file and seeds: the statistic is exactly null everywhere (not "within ±0")
        assert gates[name].noise == 0 and "±0" not in gates[name].detail
        assert gates[name].detail.endswith("no noise: the statistic is the same on every "
                                           "bootstrap resample and MC seed")  # fmt: skip
    for name in ("ood_auroc_entropy_drop", "ood_auroc_mi_drop"):
        assert gates[name].status == "skipped" and "needs OOD data" in gates[name].detail
    assert list(gates) == [s.name for s in gate_specs("classification")]  # no regression gate
    written = write_report(report, tmp_path / "r")
    assert set(written.plots) == PLOTS - {"ood_roc.png"}
    assert json.loads((tmp_path / "r" / "report.json").read_text())["passed"] is True
    md = (tmp_path / "r" / "report.md").read_text()
    assert "rmse_ratio" not in md and "None" not in md and "Warning" not in md


def test_ood_auroc_below_half_is_a_visible_warning(dm, tmp_path):
    """OOD data the model is *more* certain on than on the test set: the test inputs with the
    lowest predictive entropy (an inverted ranking, as a real OOD set can give)."""
    pred = Predictor(dm.fp32, seed=0).predict(dm.split.x_test, 8)
    confident = np.argsort(pred.predictive_entropy)[:60]
    np.savez(tmp_path / "easy.npz", x=dm.split.x_test[confident])
    args = ["validate", "-m", str(dm.fp32), "--data", str(dm.test)]
    args += ["--ood", str(tmp_path / "easy.npz"), "--bootstrap", "0", "--mc-repeats", "0"]
    args += ["--samples", "8", "--no-plots"]
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert any("OOD AUROC by entropy is 0." in w and "< 0.5" in w for w in warned), r.stderr
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["models"][0]["metrics"]["ood_auroc_entropy"] < 0.5
    assert any("OOD AUROC by entropy" in w for w in data["warnings"])
    assert "> **Warning:**" in (tmp_path / "r" / "report.md").read_text()


def test_runs_are_reproducible(dm, cli_run):
    cfg = ValidateConfig(num_samples=SAMPLES, bootstrap=0, mc_repeats=0, threads=1)
    report = validate([dm.fp32], dm.test, ood=dm.ood, config=cfg)
    again = cli_run.report["models"][0]["metrics"]
    assert report.models[0].metrics == pytest.approx(again, abs=1e-12)


def test_gates_file_with_unknown_metric_exits_1(dm, tmp_path):
    gates = tmp_path / "gates.yaml"
    gates.write_text("max_accuracy_drop: 0.01\nmax_latency_ms: 5\n")
    args = [
        "validate",
        "-m",
        str(dm.fp32),
        "--data",
        str(dm.test),
        "--gates",
        str(gates),
        "-o",
        str(tmp_path / "out"),
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 1
    assert (
        "unknown key 'max_latency_ms'" in r.output and "valid keys: max_accuracy_drop" in r.output
    )
    assert "Traceback" not in r.output


def test_cli_name_count_mismatch_is_a_usage_error(dm, tmp_path):
    args = [
        "validate",
        "-m",
        str(dm.fp32),
        "--name",
        "a",
        "--name",
        "b",
        "--name",
        "c",
        "--data",
        str(dm.test),
        "-o",
        str(tmp_path),
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "got 3 --name value(s) for 1 --model(s)" in r.output


def _labels(dm, **changes):
    y = dm.split.y_test.copy()
    for row, value in changes.get("set", {}).items():
        y[row] = value
    return y


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (
            lambda dm, d: ([dm.fp32], {"x": dm.split.x_test, "y": dm.split.y_test[:-1]}),
            RuntimeInputError,
            r"433 inputs in 'x' but 432 labels in 'y'",
        ),
        (
            lambda dm, d: ([dm.fp32], {"x": dm.split.x_test, "y": _labels(dm, set={5: 9})}),
            RuntimeInputError,
            r"label 9 at row 5 is outside \[0, 8\)",
        ),
        (
            lambda dm, d: ([dm.fp32], {"x": dm.split.x_test, "y": _labels(dm, set={3: -1})}),
            RuntimeInputError,
            r"label -1 at row 3 is outside \[0, 8\)",
        ),
        (
            lambda dm, d: ([dm.fp32], {"x": dm.split.x_test, "y": dm.split.y_test + 0.5}),
            RuntimeInputError,
            r"label .* at row 0 is not an integer class index",
        ),
        (
            lambda dm, d: ([dm.fp32, _plain_onnx(d / "ten.onnx", (1, 8, 8), 10)], dm.test),
            ConfigError,
            r"different numbers of classes: \{'fp32': 8, 'ten': 10\}",
        ),
        (
            lambda dm, d: ([dm.fp32, _plain_onnx(d / "flat.onnx", (64,), 8)], dm.test),
            ConfigError,
            r"different feature shapes: fp32 \[1, 8, 8\] vs flat \[64\]",
        ),
        (
            lambda dm, d: ([dm.fp32], {"x": dm.split.x_test.reshape(-1, 64), "y": dm.split.y_test}),
            RuntimeInputError,
            r"inputs 'x' have feature shape \[64\] but the models expect",
        ),
        (
            lambda dm, d: ([dm.fp32], _npz(d / "nolabels.npz", x=dm.split.x_test)),
            ConfigError,
            r"lacks key\(s\) \['y'\]",
        ),
        (
            lambda dm, d: ([dm.fp32], {"x": np.zeros((0, 1, 8, 8), np.float32), "y": []}),
            ConfigError,
            r"data \(<data arrays>\) is empty",
        ),
        (
            lambda dm, d: ([dm.fp32], _npz(d / "empty.npz", x=np.zeros((0, 1, 8, 8)), y=[])),
            ConfigError,
            r"'x' is empty",
        ),
        (lambda dm, d: ([dm.fp32, dm.fp32], dm.test), ConfigError, r"two models are named 'fp32'"),
        (
            lambda dm, d: ([d / "missing.onnx"], dm.test),
            ModelLoadError,
            r"missing\.onnx \('missing'\) does not exist",
        ),
        (lambda dm, d: ([], dm.test), ConfigError, r"at least one model"),
    ],
    ids=[
        "length-mismatch",
        "label-too-large",
        "label-negative",
        "label-fractional",
        "class-count",
        "feature-shape",
        "data-feature-shape",
        "npz-missing-y",
        "empty-dict",
        "empty-npz",
        "duplicate-name",
        "missing-model",
        "no-model",
    ],
)
def test_bad_inputs_raise_clear_errors(dm, tmp_path, make, error, match):
    models, data = make(dm, tmp_path)
    with pytest.raises(error, match=match):
        validate(models, data, config=ValidateConfig(**FAST))


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_ood_with_wrong_feature_shape(dm):
    ood = {"x": dm.split.x_ood.reshape(-1, 64)}
    with pytest.raises(RuntimeInputError, match=r"ood data: inputs 'x' have feature shape \[64\]"):
        validate([dm.fp32], dm.test, ood=ood, config=ValidateConfig(**FAST))


@pytest.fixture(scope="module")
def regression_model(tmp_path_factory):
    from tiny_models import bayes_mlp, example

    path = tmp_path_factory.mktemp("reg") / "reg.onnx"
    return export(bayes_mlp(), example((6,)), path, task="regression", verify=False, seed=0)


def test_regression_report(regression_model, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    pred = Predictor(regression_model, seed=0).predict(x, 8)
    y = pred.pred_mean + rng.standard_normal(pred.pred_mean.shape) * np.sqrt(pred.pred_variance)
    models = {"fp32": regression_model, "copy": regression_model}
    report = write_report(
        validate(models, {"x": x, "y": y}, ood={"x": x}, config=ValidateConfig(**FAST)),
        tmp_path,
    )
    m = report.models[0].metrics
    assert set(m) == {"rmse", "gaussian_nll", "mean_variance", "mean_epistemic_variance",
                      "picp@0.68", "picp@0.95"}  # fmt: skip
    assert 0.0 <= m["picp@0.68"] <= m["picp@0.95"] <= 1.0
    assert report.models[0].intervals["rmse"] is not None
    status = {g.name: g.status for g in report.gates["copy"]}
    regression = {"rmse_ratio", "gaussian_nll_increase", "variance_ratio", "epistemic_ratio"}
    assert report.passed and status == dict.fromkeys(regression, "pass")  # only these apply
    limits = {row[1]: row[3] for row in gate_table(report)[1]}
    assert limits["rmse_ratio"] == "<= 1.05" and limits["variance_ratio"] == "[0.8, 1.25]"
    assert any("OOD data ignored" in n for n in report.notes)
    assert report.plots == ["pred_vs_true.png", "coverage.png", "pit_hist.png"]
    for name in report.plots:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp")) and (tmp_path / "report.md").is_file()
    c = report.models[0].curves
    assert c["coverage"]["observed"][-1] == m["picp@0.95"]  # the 0.95 level is the metric
    assert sum(c["pit"]["counts"]) == y.size and len(c["pred_vs_true"]["std"]) == len(x)
    # y drawn from the model's own predictive distribution: calibrated by construction, so
    # coverage tracks the nominal level (seeded; 64 x D targets, within 0.15 of the diagonal)
    gap = np.abs(np.array(c["coverage"]["observed"]) - np.array(c["coverage"]["nominal"]))
    assert gap.max() <= 0.15, gap
    with pytest.raises(RuntimeInputError, match=r"targets 'y' have shape \[64, 2\] but the"):
        validate([regression_model], {"x": x, "y": y[:, :2]}, config=ValidateConfig(**FAST))


def test_point_predictor_gets_no_interval_views():
    """A regression model without predictive variance (a plain baseline): the scatter only."""
    y = np.arange(6, dtype=np.float64).reshape(3, 2)
    out = E.Outputs(1, pred_mean=y + 0.5, pred_variance=np.zeros_like(y))
    c = E.regression_curves(out, y)
    assert c == {"pred_vs_true": {"output": 0, "true": [0.0, 2.0, 4.0], "mean": [0.5, 2.5, 4.5]}}


def test_models_of_different_tasks_are_rejected(regression_model, dm):
    with pytest.raises(ConfigError, match=r"models mix tasks"):
        validate([dm.fp32, regression_model], dm.test, config=ValidateConfig(**FAST))
