"""``qbnn quantize``: static int8 with INC (or ONNX Runtime), posterior intact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import handles_errors

__all__ = ["quantize_cmd"]


@handles_errors
def quantize_cmd(
    model: Annotated[Path, typer.Argument(help="compiled fp32 .onnx model")],
    calib: Annotated[Path, typer.Option("--calib", help="npz with key 'x' (calibration inputs)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output int8 .onnx")],
    config: Annotated[Path | None, typer.Option("--config", help="INC config YAML/JSON")] = None,
    backend: Annotated[str | None, typer.Option(help="inc|ort (overrides the config)")] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="qdq|qoperator|auto (overrides; default auto: QDQ where provider auto runs "
            "the int8 graph on OpenVINO, else QOperator)",
        ),
    ] = None,
    speed_check: Annotated[
        bool,
        typer.Option(
            "--speed-check/--no-speed-check",
            help="time int8 against fp32 on the first calibration batch (a few calls) and say "
            "which is faster here",
        ),
    ] = True,
) -> None:
    """Quantize a compiled model to int8; fails if the posterior would be erased."""
    import dataclasses

    from ..common import check_output_file, load_config
    from ..quantize import QuantConfig, quantize_model

    check_output_file(output)
    cfg = load_config(QuantConfig, config) if config else QuantConfig()
    overrides = {k: v for k, v in (("backend", backend), ("format", fmt)) if v is not None}
    cfg = dataclasses.replace(cfg, **overrides)
    typer.echo(f"quantizing {model} with {cfg.backend.value} ({cfg.format.value})...", err=True)
    res = quantize_model(model, output, cfg, calib=calib, speed_check=speed_check)
    if res.calibration is not None:
        typer.echo(res.calibration.describe(), err=True)
    for line in res.census.lines() if res.census is not None else []:
        typer.echo(line)
    size = f"{res.int8_bytes / 1e6:.2f} MB, {res.size_ratio:.2f}x the fp32 file"
    if res.precision == "int8":
        typer.echo(f"int8 model -> {res.path} ({size}, format {res.format})")
    else:
        typer.secho(
            "warning: nothing was quantized (no op computes and no tensor is stored in 8 bits); "
            "the result is labelled fp32 (qbnn.precision=fp32)",
            fg="yellow",
            err=True,
        )
        typer.echo(f"fp32 model (not int8) -> {res.path} ({size})")
    if res.spread is not None:
        typer.echo(f"posterior kept: logit spread int8/fp32 = {res.spread.ratio:.2f}")
    if res.predictive is not None:
        w = res.predictive.worst
        typer.echo(f"predictive kept: largest mean_probs shift {w.mean_tv:.3f} ({w.group})")
    if res.speed is not None:
        line = res.speed.message()
        if res.speed.int8_slower:
            typer.secho(f"note: {line}", fg="yellow")
        else:
            typer.echo(line)
