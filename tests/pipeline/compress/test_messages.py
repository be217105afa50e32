"""What compress tells a user (issue 23, item 2): failed trials name their gates and values, a
search stopped at ``max_trials`` says so and names the real option to raise, a failed search
still writes its report, ``--share`` prints its gate verdict, layers are the user's module names.
Through Typer's CliRunner: exit codes, one-line errors, no partial files."""

from __future__ import annotations

import json

import numpy as np
import torch
from typer.testing import CliRunner

from qbnn.exporters import export
from qbnn.pipeline.cli import app
from qbnn.pipeline.compress.layers import find_layers

runner = CliRunner()


def _strict_gates(tmp_path):
    gates = tmp_path / "gates.yaml"  # exact equality of ECE: no compressed model passes
    gates.write_text("max_abs_ece_delta: 0.0\nmi_ratio_min: 1.0\nmi_ratio_max: 1.0\n")
    return gates


def test_failed_search_names_gates_max_trials_and_writes_its_report(
    ensemble_model, arrays, tmp_path
):
    src, _ = ensemble_model
    out, rep = tmp_path / "auto.onnx", tmp_path / "rep"
    r = runner.invoke(app, ["compress", str(src), "--auto", "--max-trials", "2",
                            "--calib", str(arrays["calib"]), "--data", str(arrays["test"]),
                            "--gates", str(_strict_gates(tmp_path)), "--samples", "2",
                            "-o", str(out), "--report", str(rep)])  # fmt: skip
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    trial_lines = [x for x in r.output.splitlines() if x.startswith("relative BOPs")]
    assert len(trial_lines) == 2  # max_trials validations, no more
    for line in trial_lines:  # each failure names its gates with value and limit
        assert "gates FAIL (" in line and "(limit " in line
        assert "ece_delta" in line or "mi_ratio" in line
    error = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert len(error) == 1
    msg = error[0]
    assert "stopped at max_trials 2" in msg and "raise --max-trials" in msg
    assert "--budget" not in msg and "fractions" not in msg  # only options that exist/given
    assert not out.exists()  # no partial model
    rec = json.loads((rep / "compress.json").read_text())
    assert rec["gates_passed"] is False and rec["error"] == msg.removeprefix("error: ")
    failed = [t for t in rec["search"] if t["passed"] is False]
    assert len(failed) == 2 and all(t["failed"] for t in failed)
    assert {t["skipped"] for t in rec["search"] if t["passed"] is None} == {"max_trials"}
    assert "FAIL (" in (rep / "compress.md").read_text()


def test_budget_advice_only_when_a_budget_was_given(ensemble_model, arrays, tmp_path):
    src, _ = ensemble_model
    r = runner.invoke(app, ["compress", str(src), "--auto", "--budget", "0.001",
                            "--calib", str(arrays["calib"]), "--data", str(arrays["test"]),
                            "--samples", "2", "-o", str(tmp_path / "a.onnx")])  # fmt: skip
    assert r.exit_code == 1
    msg = next(x for x in r.output.splitlines() if x.startswith("error:"))
    assert "0 tried" in msg and "over --budget 0.001 not validated" in msg
    assert "raise --budget (compress.budget)" in msg and "max-trials" not in msg


def test_share_prints_its_gate_verdict(ensemble_model, arrays, tmp_path):
    src, _ = ensemble_model
    r = runner.invoke(app, ["compress", str(src), "--share", "--data", str(arrays["test"]),
                            "--gates", str(_strict_gates(tmp_path)), "--samples", "2",
                            "-o", str(tmp_path / "s.onnx")])  # fmt: skip
    assert r.exit_code == 1
    verdict = [x for x in r.output.splitlines() if x.startswith("gates (")]
    assert len(verdict) == 1 and verdict[0].startswith("gates (6 against ens.onnx): FAIL ")
    assert "ece_delta" in verdict[0] and "mi_ratio" in verdict[0] and "[1.0, 1.0]" in verdict[0]
    r = runner.invoke(app, ["compress", str(src), "--share", "--data", str(arrays["test"]),
                            "--samples", "2", "-o", str(tmp_path / "t.onnx")])  # fmt: skip
    verdict = next(x for x in r.output.splitlines() if x.startswith("gates ("))
    assert ("all pass" in verdict) == (r.exit_code == 0), r.output


class _Wrapped(torch.nn.Module):
    """A user's module ``c1`` inside a wrapper attribute ``net`` (an MC-dropout model)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Linear(6, 16)
        self.drop = torch.nn.Dropout(0.2)
        self.c2 = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.c2(self.drop(torch.relu(self.c1(x))))


def test_layer_names_are_the_users_module_names(tmp_path):
    path = tmp_path / "mc.onnx"
    export(_Wrapped(), torch.zeros(2, 6), path, verify=False)
    import onnx

    names = list(find_layers(onnx.load(path)))
    assert names == ["c1", "c2"], names
    r = runner.invoke(app, ["compress", str(path), "--share", "--max-unique", "4",
                            "-o", str(tmp_path / "s.onnx")])  # fmt: skip
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: layer c1 has ")
    assert "net." not in lines[0] and not (tmp_path / "s.onnx").exists()
    assert np.isfinite(0.0)


def test_pipeline_yaml_compress_keys_are_checked():
    import pytest

    from qbnn.pipeline.compress import CompressConfig
    from qbnn.runtimes.errors import ConfigError

    cfg = CompressConfig(mode="share", sigma_bits=0, snr=1.0, max_trials=3)
    assert (cfg.sigma_bits, cfg.snr, cfg.max_trials) == (0, 1.0, 3)
    with pytest.raises(ConfigError, match=r"compress.sigma_bits: 3 is not one of 0"):
        CompressConfig(sigma_bits=3)
    with pytest.raises(ConfigError, match=r"compress.max_trials: 0 must be >= 1"):
        CompressConfig(max_trials=0)
    with pytest.raises(ConfigError, match=r"compress.snr: -1 must be >= 0"):
        CompressConfig(snr=-1)
