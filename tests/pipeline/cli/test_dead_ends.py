"""Issue 12, section 2: no dead ends off the README. Every path ends in one clear line
(exit code 1, or 2 for usage errors) that names the bad value and the fix, and leaves no file.

Missing libraries are simulated the way Python itself reports them: ``sys.modules[name] = None``
makes ``import name`` raise ``ModuleNotFoundError`` (and ``find_spec`` return ``None``).
"""

from __future__ import annotations

import pickle
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from qbnn.exporters import export
from qbnn.pipeline.cli import app
from qbnn.pipeline.quantize import CalibrationConfig, QuantConfig, quantize_model

from tiny_models import bayes_mlp, example

runner = CliRunner()


def _error_line(r) -> str:
    """The one error line of a failed command: the last stderr line (earlier lines, if any,
    are progress), and no traceback."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    assert "Traceback" not in r.output
    return errors[0]


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A compiled fp32 model [B, 6] -> 3 classes, its int8 twin, and labelled data."""
    d = tmp_path_factory.mktemp("tiny")
    fp32 = export(bayes_mlp(), example((6,)), d / "m.onnx", sampling="lrt", verify=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6)).astype(np.float32)
    np.savez(d / "data.npz", x=x, y=rng.integers(0, 3, size=24))
    cfg = QuantConfig(calibration=CalibrationConfig(size=16))
    int8 = quantize_model(fp32, d / "m.int8.onnx", cfg, calib=x).path
    return {"fp32": fp32, "int8": int8, "data": d / "data.npz", "x": x}


def _module(folder, name: str, body: str):
    (folder / f"{name}.py").write_text(textwrap.dedent(body))
    return f"{name}:make"


# --------------------------------------------------------------------------- missing libraries


def test_demo_without_bayesian_torch_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bayesian_torch", None)
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "art"), "--quick"])
    assert r.exit_code == 1
    line = _error_line(r)
    assert "Bayesian-Torch" in line and "pip install --no-deps bayesian-torch==0.5.0" in line
    assert _files(tmp_path) == []


@pytest.mark.parametrize(
    ("module", "command"),
    [
        ("bayesian_torch", "pip install --no-deps bayesian-torch==0.5.0"),
        ("laplace", "pip install --no-deps laplace-torch==0.3 backpack-for-pytorch==1.7.1"),
        ("asdl", "pip install 'qbnn[laplace]'"),
    ],
)
def test_run_factory_needing_a_missing_library(tmp_path, monkeypatch, module, command):
    monkeypatch.setitem(sys.modules, module, None)
    name = f"needs_{module}"
    spec = _module(tmp_path, name, f"import {module}\n\ndef make():\n    return None\n")
    monkeypatch.delitem(sys.modules, name, raising=False)
    cfg = {"name": "r", "model": {"factory": spec, "input_shape": [6]}, "stages": ["export"]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    before = _files(tmp_path)
    r = runner.invoke(app, ["run", str(tmp_path / "p.yaml")])
    assert r.exit_code == 1
    line = _error_line(r)
    assert f"module '{module}'" in line and command in line, line
    assert _files(tmp_path) == before  # no artifacts folder, no manifest


def test_export_factory_needing_a_missing_library(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bayesian_torch", None)
    monkeypatch.chdir(tmp_path)
    spec = _module(tmp_path, "needs_bt_export", "import bayesian_torch\n\ndef make(): ...\n")
    r = runner.invoke(app, ["export", "-m", spec, "--input-shape", "6", "-o", "m.onnx"])
    assert r.exit_code == 1
    assert "pip install --no-deps bayesian-torch==0.5.0" in _error_line(r)
    assert not (tmp_path / "m.onnx").exists()


# --------------------------------------------------------------------------- model factories


def test_export_imports_factories_from_the_working_directory(tmp_path, monkeypatch):
    spec = _module(
        tmp_path,
        "cwd_models",
        """
        from torch import nn

        def make():
            return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
        """,
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "cwd_models", raising=False)
    # --head logits: this untrained net's 3 outputs all fall in [0, 1], which is refused as
    # possibly multi-label probabilities without it (tests/exporters/checks/test_multilabel.py)
    args = ["export", "-m", spec, "--input-shape", "6", "--head", "logits", "-o", "m.onnx"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.onnx").is_file()
    assert str(tmp_path) not in sys.path  # the working directory was added for the import only
    help_text = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200"}).output
    assert "working directory" in help_text and "python -m" in help_text


def test_factory_with_a_syntax_error_names_file_and_line(tmp_path, monkeypatch):
    spec = _module(tmp_path, "broken_models", "def make():\n    return (\n")
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["export", "-m", spec, "--input-shape", "6", "-o", "m.onnx"])
    assert r.exit_code == 1
    line = _error_line(r)
    assert "SyntaxError" in line and "broken_models.py" in line and "line 2" in line, line
    assert not (tmp_path / "m.onnx").exists()


def test_export_hints_use_the_flag_spelling(tmp_path):
    r = runner.invoke(
        app, ["export", "-m", "tiny_models:plain_mlp", "--input-shape", "6", "-o", "m.onnx"]
    )
    assert r.exit_code == 1
    line = _error_line(r)
    assert "--posterior mcdropout" in line and "posterior='mcdropout'" not in line, line


# --------------------------------------------------------------------------- --weights


@pytest.fixture
def net_module(tmp_path, monkeypatch):
    """A user module ``pk_models`` (class Net, factory make) importable from tmp_path."""
    spec = _module(
        tmp_path,
        "pk_models",
        """
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.2), nn.Linear(8, 3))

            def forward(self, x):
                return self.body(x)

        def make():
            return Net()
        """,
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pk_models", raising=False)
    import pk_models

    torch.save(pk_models.make(), tmp_path / "whole.pt")
    yield spec
    sys.modules.pop("pk_models", None)


def _export_with(spec, weights, *extra):
    args = ["export", "-m", spec, "--input-shape", "6", "-o", "m.onnx", "--weights", weights]
    return runner.invoke(app, [*args, *extra])


def test_pickled_module_without_trust_says_what_it_is(net_module, tmp_path):
    r = _export_with(net_module, "whole.pt")
    assert r.exit_code == 1
    line = _error_line(r)
    assert "pickled whole model (class pk_models.Net" in line and "--trust-checkpoint" in line
    assert "state_dict" in line
    assert not (tmp_path / "m.onnx").exists()


def test_pickled_module_with_trust_is_a_model_source(net_module, tmp_path):
    r = _export_with(net_module, "whole.pt", "--trust-checkpoint")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.onnx").is_file()


def test_onnx_file_as_weights_is_named(net_module, tmp_path, tiny):
    r = _export_with(net_module, str(tiny["fp32"]))
    assert r.exit_code == 1
    line = _error_line(r)
    assert "is an ONNX model" in line and "--trust-checkpoint" not in line, line


def test_random_pickle_as_weights_is_named(net_module, tmp_path):
    (tmp_path / "thing.pkl").write_bytes(pickle.dumps(Fraction(1, 3)))
    r = _export_with(net_module, "thing.pkl")
    assert r.exit_code == 1
    line = _error_line(r)
    assert "a pickle of a fractions.Fraction object" in line, line
    assert "--trust-checkpoint" not in line


# --------------------------------------------------------------------------- outputs and data


def test_validate_to_an_existing_file(tiny, tmp_path):
    (tmp_path / "taken").write_text("mine")
    args = ["validate", "-m", str(tiny["fp32"]), "--data", str(tiny["data"])]
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "taken")])
    assert r.exit_code == 2
    assert "is an existing file; give a directory path" in _error_line(r)
    assert (tmp_path / "taken").read_text() == "mine"


def test_quantize_refuses_an_int8_model(tiny, tmp_path):
    args = ["quantize", str(tiny["int8"]), "--calib", str(tiny["data"])]
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "again.onnx")])
    assert r.exit_code == 1
    line = _error_line(r)
    assert "is already quantized" in line and "fp32 export" in line, line
    assert _files(tmp_path) == []


# Every command with an output in a folder that does not exist: refused with exit 2 before any
# work (the other inputs do not exist either, so any work would have failed differently).
OUTPUT_CASES = {
    "export": ["export", "-m", "nowhere:make", "--input-shape", "6", "-o", "{out}/m.onnx"],
    "quantize": ["quantize", "none.onnx", "--calib", "none.npz", "-o", "{out}/m.int8.onnx"],
    "predict": ["predict", "none.onnx", "--data", "none.npz", "-o", "{out}/p.npz"],
    "validate": ["validate", "-m", "none.onnx", "--data", "none.npz", "-o", "{out}/report"],
    "bench": ["bench", "none.onnx", "-o", "{out}/bench.json"],
    "bench --plot": ["bench", "none.onnx", "-o", "b.json", "--plot", "{out}/b.png"],
    "demo": ["demo", "--out", "{out}/artifacts"],
}


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_one_output_rule_checked_before_any_work(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no" / "such"
    args = [a.format(out=missing) for a in OUTPUT_CASES[case]]
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    line = _error_line(r)
    assert f"the folder {missing} does not exist; create it first" in line, line
    assert _files(tmp_path) == []


def test_run_checks_data_shapes_before_the_first_stage(tiny, tmp_path):
    np.savez(tmp_path / "test.npz", x=np.zeros((5, 4), np.float32), y=np.zeros(5, np.int64))
    np.savez(tmp_path / "calib.npz", x=tiny["x"])
    cfg = {
        "name": "r",
        "output_root": "art",
        "model": {"onnx": str(tiny["fp32"])},
        "data": {"calib": "calib.npz", "test": "test.npz"},
        "stages": ["export", "quantize", "validate"],
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    r = runner.invoke(app, ["run", str(tmp_path / "p.yaml")])
    assert r.exit_code == 1
    line = _error_line(r)
    assert "'data.test'" in line and "[5, 4]" in line and "'model.onnx'" in line, line
    assert not (tmp_path / "art").exists()


def test_nonfinite_inputs_name_the_flags_each_command_has(tiny, tmp_path):
    x = tiny["x"].copy()
    x[3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.zeros(len(x), np.int64))
    args = ["predict", str(tiny["fp32"]), "--data", str(tmp_path / "nan.npz")]
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "p.npz")])
    assert r.exit_code == 1
    assert "1 of 24 rows" in _error_line(r) and "--allow-nonfinite" in _error_line(r)
    args = ["validate", "-m", str(tiny["fp32"]), "--data", str(tmp_path / "nan.npz")]
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "report")])
    assert r.exit_code == 1
    line = _error_line(r)
    assert "NaN or inf" in line and "allow_nonfinite" not in line and "allow-nonfinite" not in line
    assert _files(tmp_path) == ["nan.npz"]
