"""``qbnn compress`` through Typer's CliRunner: report keys, exit codes, one-line errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from qbnn.pipeline.cli import app

runner = CliRunner()


def test_share_with_gates_writes_the_report(ensemble_model, arrays, tmp_path):
    src, _ = ensemble_model
    out, rep = tmp_path / "shared.onnx", tmp_path / "rep"
    r = runner.invoke(app, ["compress", str(src), "--share", "--max-unique", "16",
                            "--data", str(arrays["test"]), "--ood", str(arrays["ood"]),
                            "--samples", "2", "-o", str(out), "--report", str(rep)])  # fmt: skip
    rec = json.loads((rep / "compress.json").read_text())
    assert r.exit_code == (0 if rec["gates_passed"] else 1), r.output
    assert out.is_file() and "compressed ->" in r.output
    assert rec["relative_bops"] is None and rec["max_unique_per_layer"] <= 16
    assert rec["size_bytes"] == out.stat().st_size
    assert {g["name"] for g in rec["gates"]} >= {
        "accuracy_drop",
        "ece_delta",
        "mi_ratio",
        "ood_auroc_mi_drop",
    }
    assert (rep / "validate" / "report.json").is_file()


def test_plan_and_usage_errors(ensemble_model, arrays, tmp_path):
    src, _ = ensemble_model
    plan = tmp_path / "plan.yaml"
    plan.write_text("layers:\n  conv1: {weight_bits: 3}\n")
    args = ["compress", str(src), "-o", str(tmp_path / "x.onnx")]
    r = runner.invoke(app, [*args, "--plan", str(plan), "--calib", str(arrays["calib"])])
    assert r.exit_code == 1
    assert "layers.conv1.weight_bits: 3 is not one of 0, 2, 4, 8, 16, 32" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(app, [*args, "--plan", str(plan), "--share"])
    assert r.exit_code == 2 and "exactly one of --plan PLAN, --auto or --share" in r.output
    plan.write_text("layers:\n  conv1: {weight_bits: 4, act_bits: 8}\n")
    r = runner.invoke(app, [*args, "--plan", str(plan)])
    assert r.exit_code == 1 and "need calibration data (--calib calib.npz)" in r.output
    assert not (tmp_path / "x.onnx").exists()
