"""``ExportConfig``: frozen, validated in ``__post_init__``, round-trips through JSON and YAML, and
every option is settable from the Python API, the CLI (``qbnn export``) and ``pipeline.yaml``."""

from __future__ import annotations

import dataclasses
import json

import pytest
import typer
import yaml

from qbnn.exporters import ExportConfig, export
from qbnn.exporters.modules.heads import Head
from qbnn.pipeline.cli import app
from qbnn.pipeline.run.config import EXPORT_KEYS, ModelSource
from qbnn.runtimes.contract import Task
from qbnn.runtimes.errors import ConfigError

FIELDS = [f.name for f in dataclasses.fields(ExportConfig)]
CONFIGS = [
    ExportConfig(),
    ExportConfig(
        posterior="meanfield",
        sampling="frozen:4",
        num_samples=8,
        task="regression",
        seed=3,
        verify=False,
        verify_samples=32,
        opset=19,
        source="my trainer 1.0",
        heteroscedastic=True,
        noise_variance=None,
        head=None,
    ),
    ExportConfig(task="classification", head="log_probs", noise_variance=0.25),
    ExportConfig(output_key="logits"),
    ExportConfig(output_key=1),  # a tuple index, kept as the string "1"
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_round_trips_through_json_and_yaml(cfg):
    assert ExportConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert ExportConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


def test_numpy_numbers_are_accepted():
    import numpy as np

    cfg = ExportConfig(num_samples=np.int64(8), noise_variance=np.float32(0.5))
    assert cfg.num_samples == 8 and type(cfg.num_samples) is int


def test_strings_become_enums_and_the_record_is_frozen():
    cfg = ExportConfig(task="regression", head="auto")
    assert cfg.task is Task.REGRESSION and cfg.head is None
    assert ExportConfig(head="probs").head is Head.PROBS
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        ExportConfig("auto")  # type: ignore[misc]  # kw_only


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task": "segmentation"}, "unknown task 'segmentation'; valid tasks: classification"),
        ({"head": "softmax"}, "unknown head 'softmax'; valid heads: auto, logits, probs"),
        ({"num_samples": 0}, "num_samples must be >= 1 and verify_samples >= 2; got 0, 64"),
        ({"verify_samples": 1}, "num_samples must be >= 1 and verify_samples >= 2; got 16, 1"),
        ({"num_samples": 2.5}, "num_samples must be an integer; got 2.5"),
        ({"opset": 17}, r"opset must be >= 18 \(torch.onnx's dynamo exporter\); got 17"),
        ({"posterior": ""}, "posterior must be 'auto' or a family name; got ''"),
        ({"noise_variance": -1.0}, r"noise_variance must be a finite number > 0; got -1.0"),
        ({"noise_variance": float("inf")}, r"noise_variance must be a finite number > 0; got inf"),
        ({"output_key": ""}, r"output_key must be a key of the model's output dict .*; got ''"),
        ({"output_key": -1}, r"output_key must be .* or a tuple index >= 0; got -1"),
        ({"output_key": True}, r"output_key must be .*; got True"),
    ],
)
def test_bad_values_raise_config_error_naming_them(changes, message):
    with pytest.raises(ConfigError, match=message):
        ExportConfig(**changes)


def test_unknown_keys_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"unknown export option\(s\) samples; valid: head"):
        ExportConfig.from_dict({"samples": 4})


def test_the_api_refuses_an_unknown_keyword(tmp_path):
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_sample'"):
        export(None, None, tmp_path / "m.onnx", num_sample=4)


def test_every_option_is_settable_from_the_cli():
    cmd = typer.main.get_command(app).commands["export"]
    params = {p.name for p in cmd.params if p.param_type_name == "option"}
    spelled = {"num_samples": "samples"}  # --samples, the CLI's name since the start
    assert {spelled.get(f, f) for f in FIELDS} - params == set()


def test_every_option_is_settable_from_pipeline_yaml():
    assert sorted(EXPORT_KEYS) == sorted(FIELDS)
    src = ModelSource(factory="m:f", input_shape=(6,), head="probs", opset=19, verify=False)
    cfg = ExportConfig.from_dict(src.export_options())
    assert (cfg.head, cfg.opset, cfg.verify, cfg.seed, cfg.sampling) == (
        Head.PROBS,
        19,
        False,
        0,
        None,
    )
