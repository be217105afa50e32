"""Issue 21, item 5: ``auto`` is the default format, and quantize says, with measured figures,
when int8 is slower than fp32 for this graph on this CPU."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from qbnn.exporters import export
from qbnn.pipeline.cli import app
from qbnn.pipeline.common import load_config
from qbnn.pipeline.quantize import QuantConfig, QuantFormat
from qbnn.pipeline.quantize.speed import SpeedCheck, speed_message

from tiny_models import bayes_mlp, example

ROOT = Path(__file__).resolve().parents[3]


def test_default_format_is_auto_and_the_shipped_default_file_says_so():
    assert QuantConfig().format == QuantFormat.AUTO
    assert load_config(QuantConfig, ROOT / "pipeline" / "configs" / "quantize_default.yaml") == (
        QuantConfig()
    )


def test_message_says_int8_is_slower_with_the_figures():
    line = speed_message(9.8, 12.3, batch=32, samples=8, size_ratio=0.27)
    assert line == (
        "int8 is slower than fp32 on this CPU for this graph (12.3 ms vs 9.8 ms per call, "
        "batch 32, S 8): keep fp32 for speed, int8 for size (0.27x file)"
    )
    bigger = speed_message(9.8, 12.3, batch=32, samples=8, size_ratio=1.23)
    assert bigger.endswith("keep fp32 (the int8 file is not smaller either: 1.23x)")


def test_message_when_int8_is_faster_and_providers_differ():
    line = speed_message(12.0, 8.0, batch=4, samples=16, size_ratio=0.3, providers=("a", "b"))
    assert "slower" not in line
    assert "(0.123 ms vs 0.456 ms" in speed_message(0.456, 0.123, batch=1, samples=1, size_ratio=1)
    assert line == (
        "int8 runs 1.50x as fast as fp32 on this CPU for this graph (8.0 ms vs 12.0 ms per call, "
        "batch 4, S 16, int8 on a, fp32 on b)"
    )
    same = SpeedCheck(
        fp32_ms=1.0, int8_ms=2.0, batch=1, samples=8, fp32_provider="cpu", int8_provider="cpu",
        runs=5, size_ratio=0.5,
    )  # fmt: skip
    assert same.int8_slower and "int8 on" not in same.message()
    assert same.to_dict()["message"] == same.message() and same.to_dict()["int8_slower"]


_FIGURES = re.compile(r"\(([\d.]+) ms vs ([\d.]+) ms per call, batch (\d+), S (\d+)")


def test_cli_prints_a_measured_line_consistent_with_its_numbers(tmp_path):
    src = export(bayes_mlp(), example((6,)), tmp_path / "m.onnx", sampling="lrt", verify=False)
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    args = ["quantize", str(src), "--calib", str(tmp_path / "calib.npz")]
    r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "m.int8.onnx")])
    assert r.exit_code == 0, r.output
    (line,) = [ln for ln in r.stdout.splitlines() if "per call" in ln]
    int8_ms, fp32_ms, batch, samples = _FIGURES.search(line).groups()
    assert (batch, samples) == ("32", "8")  # the calibration batch and S
    slower = float(int8_ms) > float(fp32_ms)
    if float(int8_ms) != float(fp32_ms):  # printed figures tie only when rounding hides it
        assert ("int8 is slower than fp32" in line) == slower, line
        assert ("keep fp32" in line) == slower, line
    assert "format qoperator" in r.stdout  # a dense graph: auto picks QOperator (the CPU EP)


def test_cli_speed_check_can_be_turned_off(tmp_path):
    src = export(bayes_mlp(), example((6,)), tmp_path / "m.onnx", sampling="lrt", verify=False)
    np.savez(tmp_path / "calib.npz", x=np.ones((16, 6), np.float32))
    args = ["quantize", str(src), "--calib", str(tmp_path / "calib.npz"), "--no-speed-check"]
    r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "m.int8.onnx")])
    assert r.exit_code == 0, r.output
    assert "per call" not in r.stdout


@pytest.mark.parametrize("fmt", ["qoperator", "qdq", "auto"])
def test_format_override_round_trips(fmt):
    assert QuantConfig(format=fmt).format.value == fmt
