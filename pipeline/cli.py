"""The ``qbnn`` command line: each command parses, builds a config, calls one stage.

Errors of the :class:`QbnnError` family are printed as one line (exit 1; 2 for usage errors),
never as a traceback.
"""

from __future__ import annotations

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
        str, typer.Option(help="auto|meanfield|flipout|mcdropout|ensemble")
    ] = "auto",
    sampling: Annotated[str | None, typer.Option(help="weight|lrt|flipout|frozen:K|...")] = None,
    samples: Annotated[int, typer.Option("--samples", help="default MC samples S")] = 16,
    seed: Annotated[int | None, typer.Option(help="fix every random node's seed")] = None,
    task: Annotated[str, typer.Option(help="classification|regression")] = "classification",
    batch: Annotated[int, typer.Option(help="example batch for the self-check")] = 4,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="self-check")] = True,
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
    )
    if result.fidelity is not None:
        typer.echo(result.fidelity.summary())
        for w in result.fidelity.warnings:
            typer.echo(f"warning: {w}", err=True)
    typer.echo(f"exported {result.family} ({result.sampling}) -> {result.path}")


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
