"""qbnn run / demo: end to end on the reduced demo, manifest hashes, skipping, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from qbnn.pipeline.cli import app
from qbnn.pipeline.cli.run import print_result
from qbnn.pipeline.run import (
    RunConfig,
    RunResult,
    demo_config_text,
    load_run_config,
    run,
    sha256_file,
)
from qbnn.runtimes.errors import ConfigError, QbnnError

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`qbnn demo --quick` once: trained inputs, all four stages."""
    out = tmp_path_factory.mktemp("demo")
    r = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out, r.output


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def test_demo_produces_every_artifact_with_valid_hashes(demo_run):
    out, output = demo_run
    for model in ("bnn", "det"):  # per-epoch training progress (rich, final state when logged)
        assert re.search(rf"training {model} .*30/30 epochs", output), output
    root = out / "demo"
    m = _manifest(root)
    assert [s for s, v in m["stages"].items() if v["status"] == "done"] == [
        "export",
        "quantize",
        "validate",
        "bench",
    ]
    paths = {a["path"] for a in m["artifacts"]}
    expected = {
        "model.fp32.onnx",
        "baseline.onnx",
        "model.int8.onnx",
        "report/report.json",
        "report/report.md",
        "report/reliability.png",
        "report/entropy_hist.png",
        "report/referral.png",
        "report/ood_roc.png",
        "bench/bench.json",
        "bench/bench.png",
    }
    assert expected <= paths
    for a in m["artifacts"]:
        assert sha256_file(root / a["path"]) == a["sha256"], a["path"]
        assert a["tools"]["onnxruntime"] and a["tools"]["torch"] and a["stage"]
        assert a["config"]
    int8 = next(a for a in m["artifacts"] if a["path"] == "model.int8.onnx")
    assert int8["parent"] == "model.fp32.onnx"
    for word in ("accuracy", "OOD AUROC", "referral", "images/s", "report.md", "manifest"):
        assert word in output
    assert m["stages"]["validate"]["gates_passed"] is True


def test_rerun_skips_unchanged_stages_and_reruns_changed(demo_run):
    out, _ = demo_run
    cfg = out / "demo-inputs" / "pipeline.yaml"
    before = _manifest(out / "demo")
    res = run(cfg)
    assert res.ran == () and res.skipped == ("export", "quantize", "validate", "bench")
    assert _manifest(out / "demo")["artifacts"] == before["artifacts"]
    data = yaml.safe_load(cfg.read_text())
    data["validate"]["num_samples"] = 6
    cfg.write_text(yaml.safe_dump(data))
    res = run(cfg)
    assert res.ran == ("validate",)
    res = run(cfg, force=True)
    assert res.ran == ("export", "quantize", "validate", "bench")


def test_failed_stage_keeps_earlier_artifacts_and_a_valid_manifest(demo_run, tmp_path):
    out, _ = demo_run
    inputs = out / "demo-inputs"
    data = yaml.safe_load((inputs / "pipeline.yaml").read_text())
    data.update(name="broken", output_root=str(tmp_path))
    data["data"] = {k: str(inputs / v) for k, v in data["data"].items()}
    data["model"]["weights"] = str(inputs / "bnn.pt")
    data["baseline"]["weights"] = str(inputs / "det.pt")
    x = np.zeros((4, 1, 8, 8), np.float32)
    x[2, 0, 3, 3] = np.nan  # the right shape (the pre-flight check passes), NaN inside
    np.savez(tmp_path / "wrong.npz", x=x)
    data["data"]["calib"] = str(tmp_path / "wrong.npz")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump(data))
    with pytest.raises(QbnnError, match=r"calibration data contains NaN or inf values"):
        run(cfg)
    m = _manifest(tmp_path / "broken")
    assert m["stages"]["export"]["status"] == "done"
    assert m["stages"]["quantize"]["status"] == "failed"
    assert "calibration data contains NaN" in m["stages"]["quantize"]["error"]
    for a in m["artifacts"]:
        assert sha256_file(tmp_path / "broken" / a["path"]) == a["sha256"]
    assert not (tmp_path / "broken" / "model.int8.onnx").exists()


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "pipeline.yaml"
    p.write_text(text)
    return p


MINIMAL = """
name: t
model: {factory: "tiny_models:bayes_mlp", input_shape: [6]}
data: {calib: c.npz, test: t.npz}
"""


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ("quantize:\n  autotune:\n    metrc: ece\n", "unknown key 'quantize.autotune.metrc'"),
        (
            "quantize:\n  autotune:\n    metric: f1\n",
            "'quantize.autotune.metric' is 'f1'; valid choices: accuracy, nll, ece",
        ),
        ("stages: [export, deploy]\n", r"'stages\[1\]' is 'deploy'; valid choices: export"),
        ("bench:\n  repeats: many\n", "'bench.repeats' must be of type int"),
        (
            "validate:\n  gates:\n    max_acc_drop: 0.1\n",
            "unknown key 'validate.gates.max_acc_drop'",
        ),
        ("modle: {}\n", "unknown key 'modle'"),
        (
            "model: {factory: 'tiny_models:bayes_mlp', input_shape: [6], task: ranking}\n",
            "'model.task' is 'ranking'; valid choices: classification, regression",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path, patch, match):
    with pytest.raises(ConfigError, match=match):
        load_run_config(_write(tmp_path, MINIMAL + patch))


def test_malformed_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML at line 2, column 8: mapping values"):
        load_run_config(_write(tmp_path, "name: t\nmodel: : x\n"))


def test_missing_files_and_stage_order(tmp_path):
    cfg = _write(tmp_path, MINIMAL)
    r = runner.invoke(app, ["run", str(cfg)])
    assert r.exit_code == 1 and "'data.calib' points to" in r.output and "Traceback" not in r.output
    cfg = _write(tmp_path, MINIMAL.replace("name: t", "name: u") + "stages: [validate]\n")
    _tiny_data(tmp_path)
    with pytest.raises(
        ConfigError, match="stage 'validate' needs model.fp32.onnx from stage 'export'"
    ):
        run(cfg)
    with pytest.raises(ConfigError, match="config file .* does not exist"):
        run(tmp_path / "nope.yaml")


def _tiny_data(folder: Path) -> None:
    """``c.npz`` and ``t.npz`` for MINIMAL's model ([N, 6] inputs, 3 classes)."""
    x = np.zeros((4, 6), np.float32)
    np.savez(folder / "c.npz", x=x)
    np.savez(folder / "t.npz", x=x, y=np.zeros(4, np.int64))


def test_unwritable_artifacts_folder(tmp_path):
    _tiny_data(tmp_path)
    (tmp_path / "afile").write_text("x")
    cfg = _write(tmp_path, MINIMAL + "output_root: afile\n")
    with pytest.raises(ConfigError, match="'output_root' .*afile is an existing file"):
        run(cfg)
    cfg = _write(tmp_path, MINIMAL + "output_root: no/such\n")
    with pytest.raises(ConfigError, match=r"the folder .*/no does not exist; create it first"):
        run(cfg)
    assert not (tmp_path / "no").exists()


def test_run_summary_repeats_the_report_warnings(tmp_path, capsys):
    (tmp_path / "report").mkdir()
    warning = "int8: OOD AUROC by entropy is 0.412 < 0.5 [inverted]"
    (tmp_path / "report" / "report.json").write_text(json.dumps({"warnings": [warning]}))
    result = RunResult(tmp_path, tmp_path / "manifest.json", (), (), True, ())
    print_result(result)
    assert f"warning: {warning}" in capsys.readouterr().out  # markup in the text is kept


def test_shipped_configs(tmp_path):
    assert (ROOT / "examples" / "demo.yaml").read_text() == demo_config_text()
    cfg, _ = load_run_config(ROOT / "examples" / "pipeline_byo.yaml")
    assert isinstance(cfg, RunConfig) and cfg.model.sampling == "lrt"
    from qbnn.exporters import known_families

    text = (ROOT / "examples" / "pipeline_byo.yaml").read_text()
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("posterior:"))
    listed = {p.strip() for p in line.split("#", 1)[1].split("|")}
    assert listed == {"auto", *known_families()}  # every registered posterior is offered


def test_regression_pipeline_from_the_diabetes_example(tmp_path):
    """examples/diabetes: a laplace-torch posterior built by a factory beside the config,
    exported with task: regression, quantized, validated with the regression gates."""
    import shutil
    import subprocess
    import sys

    ex = tmp_path / "diabetes"
    shutil.copytree(ROOT / "examples" / "diabetes", ex)
    subprocess.run([sys.executable, str(ex / "diabetes_models.py")], check=True)
    cfg = yaml.safe_load((ex / "pipeline.yaml").read_text())
    cfg["output_root"] = str(tmp_path / "out")
    cfg["stages"] = ["export", "quantize", "validate"]
    (ex / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    r = runner.invoke(app, ["run", str(ex / "pipeline.yaml")])
    assert r.exit_code == 0, r.output
    assert "RMSE" in r.output and "all gates passed" in r.output
    report = json.loads(
        (tmp_path / "out" / "diabetes-laplace" / "report" / "report.json").read_text()
    )
    assert report["task"] == "regression"
    m = {x["name"]: x["metrics"] for x in report["models"]}
    assert m["fp32"]["rmse"] < 0.8 and 0.85 <= m["fp32"]["picp@0.95"] <= 1.0
    assert m["baseline"]["gaussian_nll"] is None  # a point predictor has no predictive NLL
    gates = {g["name"]: g["passed"] for g in report["gates"]["int8"]}
    assert gates["rmse_ratio"] and gates["gaussian_nll_increase"] and gates["variance_ratio"]
