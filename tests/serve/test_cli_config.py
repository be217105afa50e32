"""``qbnn serve`` / ``qbnn score`` usage errors (one line, no server started) and the configs'
validation."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qbnn.pipeline.cli import app
from qbnn.runtimes.errors import ConfigError
from qbnn.serve import ModelSpec, ScoreConfig, ServeConfig, parse_model_arg

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["serve", "missing.onnx"], 2, "model file missing.onnx does not exist"),
        (["serve", "{cnn}", "--num-samples", "other=4"], 2, "no model named 'other'"),
        (["serve", "{cnn}", "--num-samples", "0"], 2, "expected S or name=S with S >= 1"),
        (["serve", "{cnn}", "--max-batch", "0"], 1, "max_batch must be an integer >= 1, got 0"),
        (["serve", "a={cnn}", "a={frozen}"], 1, r"model names must be unique, got \['a'\]"),
        (["serve", "{cnn}", "--ray", "--replicas", "0"], 2, "--replicas must be >= 1, got 0"),
    ],
)
def test_serve_usage_errors(model_files, args, code, message):
    args = [a.format(**{k: str(v) for k, v in model_files.items()}) for a in args]
    r = runner.invoke(app, args)
    assert r.exit_code == code, r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1
    assert re.search(message, r.output), r.output


def test_missing_serving_library_names_the_extra(model_files, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    r = runner.invoke(app, ["serve", str(model_files["cnn"])])
    assert r.exit_code == 1
    assert "uvicorn (qbnn serve) (module 'uvicorn') is not installed" in r.output
    assert "pip install 'qbnn[serve]'" in r.output


def test_model_arg_and_config_validation():
    assert parse_model_arg("dir/digits.onnx") == ModelSpec(
        name="digits", path=Path("dir/digits.onnx")
    )
    assert parse_model_arg("d=x.onnx").name == "d"
    with pytest.raises(ConfigError, match="model name 'a b' is not valid"):
        ModelSpec(name="a b", path=Path("x.onnx"))
    with pytest.raises(ConfigError, match="at least one model"):
        ServeConfig(models=())
    spec = ModelSpec(name="m", path=Path("m.onnx"), num_samples=512)
    with pytest.raises(ConfigError, match="num_samples 512 exceeds max_num_samples 256"):
        ServeConfig(models=(spec,))
    with pytest.raises(ConfigError, match=r"max_delay_ms must be in \[0, 10000\], got -1"):
        ServeConfig(models=(ModelSpec(name="m", path=Path("m.onnx")),), max_delay_ms=-1)
    with pytest.raises(ConfigError, match="workers must be >= 1, got 0"):
        ScoreConfig(workers=0)
    assert ServeConfig(models=(ModelSpec(name="m", path=Path("m.onnx")),)).host == "127.0.0.1"


def test_configs_round_trip_through_json():
    cfg = ServeConfig(models=(ModelSpec(name="m", path=Path("m.onnx"), num_samples=8),),
                      max_batch=16, batching=False)  # fmt: skip
    raw = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    back = ServeConfig(**{**raw, "models": tuple(ModelSpec(**m) for m in raw["models"])})
    assert back == cfg
    score_cfg = ScoreConfig(num_samples=4, seed=3, workers=3)
    assert ScoreConfig(**json.loads(json.dumps(dataclasses.asdict(score_cfg)))) == score_cfg
