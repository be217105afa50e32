"""``qbnn export`` prints where the work runs: once per call or per MC sample (issue 21, 4)."""

from __future__ import annotations

import onnx
from typer.testing import CliRunner

from qbnn.pipeline.cli import app
from qbnn.runtimes import split_report

runner = CliRunner()


def test_export_prints_the_split_at_its_batch_and_samples(tmp_path):
    out = tmp_path / "m.onnx"
    args = ["export", "-m", "tiny_models:dropout_mlp", "--input-shape", "6", "-o", str(out)]
    r = runner.invoke(app, [*args, "--batch", "2", "--samples", "5", "--no-verify"])
    assert r.exit_code == 0, r.output
    expected = split_report(onnx.load(str(out)), 2, 5)
    lines = r.stdout.splitlines()
    assert lines[-1] == expected.summary(), r.stdout
    assert lines[-1].startswith("deterministic prefix: ") and "x S=5 (batch 2," in lines[-1]
    assert expected.ops_once + expected.ops_per_sample > 0
