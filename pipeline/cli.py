"""The ``qbnn`` command line: each command parses, builds a config, calls one stage.

Errors of the :class:`QbnnError` family are printed as one line (exit 1; 2 for usage errors),
never as a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from qbnn.runtimes.errors import QbnnError, UsageError

__all__ = ["app", "main"]

app = typer.Typer(
    name="qbnn",
    help="Compile, quantize, validate and benchmark Bayesian neural networks as ONNX graphs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def handles_errors(fn):
    """Turn qbnn errors into one clear stderr line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QbnnError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2 if isinstance(exc, UsageError) else 1) from None

    return wrapper


@contextlib.contextmanager
def progress_bar(label: str, total: int):
    """A rich progress bar on stderr for long runs; yields ``advance(done, total)``."""
    from rich.progress import Progress

    with Progress(transient=True, console=_stderr_console()) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done, _total: bar.update(task, completed=done)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@app.command("export")
@handles_errors
def export_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="pkg.module:factory")],
    input_shape: Annotated[str, typer.Option("--input-shape", help="feature shape, e.g. 3,32,32")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output .onnx path")],
    weights: Annotated[Path | None, typer.Option("--weights", help="state-dict checkpoint")] = None,
    posterior: Annotated[
        str, typer.Option(help="auto|meanfield|flipout|mcdropout|ensemble|laplace|swag|gaussian")
    ] = "auto",
    sampling: Annotated[str | None, typer.Option(help="weight|lrt|flipout|frozen:K|...")] = None,
    samples: Annotated[int, typer.Option("--samples", help="default MC samples S")] = 16,
    seed: Annotated[int | None, typer.Option(help="fix every random node's seed")] = None,
    task: Annotated[str, typer.Option(help="classification|regression")] = "classification",
    batch: Annotated[int, typer.Option(help="example batch for the self-check")] = 4,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="self-check")] = True,
    heteroscedastic: Annotated[
        bool, typer.Option(help="regression head outputs [mean, log-variance]")
    ] = False,
    noise_variance: Annotated[
        float | None,
        typer.Option(help="regression: observation-noise variance added to pred_variance"),
    ] = None,
    trust_checkpoint: Annotated[
        bool, typer.Option(help="allow full unpickling of --weights (trusted files only)")
    ] = False,
) -> None:
    """Export a trained torch BNN to a stochastic ONNX graph."""
    import torch

    from qbnn.exporters import export_model
    from qbnn.exporters.loading import load_model, parse_shape

    shape = parse_shape(input_shape)
    net = load_model(model, weights, trust=trust_checkpoint)
    gen = torch.Generator().manual_seed(0)
    example = torch.randn((max(batch, 1), *shape), generator=gen)
    result = export_model(
        net,
        example,
        output,
        posterior=posterior,
        sampling=sampling,
        num_samples=samples,
        task=task,
        seed=seed,
        verify=verify,
        heteroscedastic=heteroscedastic,
        noise_variance=noise_variance,
    )
    if result.fidelity is not None:
        typer.echo(result.fidelity.summary())
        for w in result.fidelity.warnings:
            typer.echo(f"warning: {w}", err=True)
    typer.echo(f"exported {result.family} ({result.sampling}) -> {result.path}")


@app.command("predict")
@handles_errors
def predict_cmd(
    model: Annotated[Path, typer.Argument(help="compiled .onnx model")],
    data: Annotated[Path, typer.Option("--data", help="npz with key 'x' [N, *feature_shape]")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output .npz")],
    samples: Annotated[int | None, typer.Option("--samples", help="MC samples S")] = None,
    provider: Annotated[str, typer.Option(help="auto|cpu|openvino|dnnl")] = "auto",
    seed: Annotated[int | None, typer.Option(help="reproducible noise")] = None,
    threads: Annotated[int | None, typer.Option(help="intra-op threads")] = None,
    save_samples: Annotated[bool, typer.Option(help="also save probs [S, N, C]")] = False,
    allow_nonfinite: Annotated[bool, typer.Option(help="accept NaN/inf inputs")] = False,
    plain_output: Annotated[str, typer.Option(help="plain models: logits|probs")] = "logits",
) -> None:
    """MC-batched inference: npz in (key x), npz out (the Prediction fields)."""
    from qbnn.pipeline.io import load_npz, save_npz
    from qbnn.runtimes import Predictor, PredictorOptions

    x = load_npz(data, require=("x",))["x"]
    opts = PredictorOptions(allow_nonfinite=allow_nonfinite, plain_output=plain_output)
    pred = Predictor(model, provider=provider, threads=threads, seed=seed, options=opts)
    typer.echo(f"provider: {pred.provider}", err=True)
    with progress_bar(f"predicting {len(x)} inputs", len(x)) as advance:
        result = pred.predict(x, samples, return_samples=save_samples, progress=advance)
    save_npz(output, result.as_dict())
    typer.echo(f"{len(x)} predictions (S={result.num_samples}) -> {output}")


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())


# Stage commands that live in their own modules register themselves on ``app``.
from qbnn.pipeline import cli_bench, cli_quantize, cli_run, cli_validate  # noqa: E402,F401
