"""Every export error path: a clear message, exit code 1/2 at the CLI, no partial file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bayesian_torch.layers import Conv3dReparameterization
from torch import nn
from typer.testing import CliRunner

from qbnn.exporters import export, export_model
from qbnn.pipeline.cli import app
from qbnn.runtimes.errors import (
    ConfigError,
    ExportError,
    UnsupportedLayerError,
    VerificationError,
)

from tiny_models import CASES, bayes_mlp, example, plain_mlp

runner = CliRunner()


class Vol(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = Conv3dReparameterization(1, 2, 3, 0.0, 1.0, 0.0, -3.0)

    def forward(self, x):
        return self.c(x)[0].flatten(1)


class PythonNoise(nn.Module):
    """Noise drawn in Python (numpy) cannot become a graph op: the trace freezes one draw."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = bayes_mlp()

    def forward(self, x):
        out, kl = self.inner(x)
        noise = torch.from_numpy(np.random.standard_normal(out.shape[-1]).astype(np.float32))
        return out + 3.0 * noise, kl


def _no_leftovers(directory):
    return [p.name for p in directory.iterdir()] == []


def test_unsupported_layer_names_it_and_lists_supported(tmp_path):
    with pytest.raises(
        UnsupportedLayerError,
        match=r"'c' of type Conv3dReparameterization.*"
        r"LinearReparameterization",
    ):
        export(Vol(), torch.randn(2, 1, 4, 4, 4), tmp_path / "m.onnx")
    assert _no_leftovers(tmp_path)


def test_invalid_sampling_for_family(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"'flipout' is not valid for the 'meanfield' family.*"
        r"weight, lrt, frozen:K",
    ):
        export(bayes_mlp(), example((6,)), tmp_path / "m.onnx", sampling="flipout")
    with pytest.raises(ConfigError, match="takes no ':K'"):
        export(bayes_mlp(), example((6,)), tmp_path / "m.onnx", sampling="lrt:3")


def test_unknown_family_and_task(tmp_path):
    with pytest.raises(ConfigError, match="unknown posterior family 'svgd'.*meanfield"):
        export(bayes_mlp(), example((6,)), tmp_path / "m.onnx", posterior="svgd")
    with pytest.raises(ExportError, match="'swag' family needs a SwagPosterior, got BayesMLP"):
        export(bayes_mlp(), example((6,)), tmp_path / "m.onnx", posterior="swag")
    with pytest.raises(ExportError, match="needs a fitted laplace-torch object, got BayesMLP"):
        export(bayes_mlp(), example((6,)), tmp_path / "m.onnx", posterior="laplace")
    with pytest.raises(ConfigError, match="unknown task 'ranking'"):
        export(bayes_mlp(), example((6,)), tmp_path / "m.onnx", task="ranking")


def test_deterministic_model_is_rejected(tmp_path):
    with pytest.raises(ExportError, match="no stochastic layer found in PlainMLP.*mcdropout"):
        export(plain_mlp(), example((6,)), tmp_path / "m.onnx")


def test_input_shape_the_model_rejects(tmp_path):
    with pytest.raises(ExportError, match=r"rejected an input of shape \[4, 7\]"):
        export(bayes_mlp(), example((7,)), tmp_path / "m.onnx")
    assert _no_leftovers(tmp_path)


def test_output_directory_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="output directory .*missing.* does not exist"):
        export(bayes_mlp(), example((6,)), tmp_path / "missing" / "m.onnx")


def test_ensemble_members_must_match(tmp_path):
    class Wider(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1 = nn.Linear(6, 16)
            self.l2 = nn.Linear(16, 4)

        def forward(self, x):
            return self.l2(self.l1(x))

    with pytest.raises(ExportError, match="member 1 .* does not match member 0"):
        export([plain_mlp(), Wider()], example((6,)), tmp_path / "m.onnx")


def test_failed_self_check_leaves_no_file(tmp_path):
    np.random.seed(0)
    with pytest.raises(VerificationError, match="'probs'.*(spread|MC mean)"):
        export(PythonNoise(), example((6,)), tmp_path / "m.onnx", sampling="lrt")
    assert _no_leftovers(tmp_path)


def test_python_noise_cannot_enter_the_sample_loop(tmp_path):
    """weight mode traces forward once per MC sample inside a Scan (torch.compile-style): numpy
    noise there is refused with the reason and the alternatives, and no file is written."""
    with pytest.raises(ExportError, match=r"sample loop.*numpy.*\(lrt, frozen:K\)"):
        export(PythonNoise(), example((6,)), tmp_path / "m.onnx", sampling="weight")
    assert _no_leftovers(tmp_path)


def test_export_result_reports_fidelity(tmp_path):
    factory, shape = CASES["meanfield-mlp"]
    res = export_model(factory(), example(shape), tmp_path / "m.onnx")
    assert res.fidelity is not None and res.fidelity.samples == 64
    assert "self-check" in res.fidelity.summary()


# ---------------------------------------------------------------- CLI


def test_cli_export_ok(tmp_path):
    out = tmp_path / "m.onnx"
    r = runner.invoke(
        app,
        [
            "export",
            "--model",
            "tiny_models:bayes_cnn",
            "--input-shape",
            "1,8,8",
            "--sampling",
            "lrt",
            "--samples",
            "4",
            "--seed",
            "3",
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert out.is_file() and "exported meanfield (lrt)" in r.output


def test_cli_export_with_weights(tmp_path):
    ckpt = tmp_path / "w.pt"
    torch.save(bayes_mlp().state_dict(), ckpt)
    r = runner.invoke(
        app,
        [
            "export",
            "-m",
            "tiny_models:bayes_mlp",
            "--weights",
            str(ckpt),
            "--input-shape",
            "6",
            "-o",
            str(tmp_path / "m.onnx"),
        ],
    )
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["-m", "no_such_module:f", "--input-shape", "6"], 1, "cannot import module"),
        (["-m", "tiny_models", "--input-shape", "6"], 2, "package.module:factory"),
        (["-m", "tiny_models:missing", "--input-shape", "6"], 1, "missing or not callable"),
        (["-m", "tiny_models:not_a_module", "--input-shape", "6"], 1, "returned a str"),
        (["-m", "tiny_models:bayes_mlp", "--input-shape", "6,x"], 2, "positive integers"),
        (["-m", "tiny_models:bayes_mlp", "--input-shape", "7"], 1, "rejected an input"),
        (
            ["-m", "tiny_models:bayes_mlp", "--input-shape", "6", "--sampling", "flipout"],
            1,
            "not valid for the 'meanfield' family",
        ),
    ],
)
def test_cli_export_errors(tmp_path, args, code, message):
    r = runner.invoke(app, ["export", *args, "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code == code, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "m.onnx").exists()


def test_cli_weights_that_do_not_match(tmp_path):
    ckpt = tmp_path / "w.pt"
    torch.save(plain_mlp().state_dict(), ckpt)
    r = runner.invoke(
        app,
        [
            "export",
            "-m",
            "tiny_models:bayes_mlp",
            "--weights",
            str(ckpt),
            "--input-shape",
            "6",
            "-o",
            str(tmp_path / "m.onnx"),
        ],
    )
    assert r.exit_code == 1
    assert "do not match the model (missing: l1.mu_weight" in r.output


def test_cli_refuses_pickled_checkpoint_without_opt_in(tmp_path):
    ckpt = tmp_path / "w.pt"
    torch.save(
        {"state_dict": bayes_mlp().state_dict(), "extra": ValueError("pickled object")}, ckpt
    )
    args = [
        "export",
        "-m",
        "tiny_models:bayes_mlp",
        "--weights",
        str(ckpt),
        "--input-shape",
        "6",
        "-o",
        str(tmp_path / "m.onnx"),
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "--trust-checkpoint" in r.output
    r = runner.invoke(app, [*args, "--trust-checkpoint"])
    assert r.exit_code == 0, r.output
