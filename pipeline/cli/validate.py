"""``qbnn validate``: compare models side by side, write the report, exit 1 if a gate fails."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from qbnn.runtimes.errors import UsageError

from .common import handles_errors

__all__ = ["validate_cmd"]


def _names(models: list[Path], names: list[str] | None, baseline: Path | None):
    """``({name: path} of the models, baseline or (name, baseline))`` from ``--name``s."""
    if not names:
        return [str(m) for m in models], baseline
    allowed = {len(models)} | ({len(models) + 1} if baseline else set())
    if len(names) not in allowed:
        raise UsageError(
            f"got {len(names)} --name value(s) for {len(models)} --model(s)"
            f"{' and a --baseline' if baseline else ''}; expected "
            f"{' or '.join(map(str, sorted(allowed)))}"
        )
    mapping = dict(zip(names, models, strict=False))
    if len(mapping) != len(models):
        raise UsageError(f"--name values must be distinct; got {names}")
    if baseline is not None and len(names) > len(models):
        return mapping, (names[-1], baseline)
    return mapping, baseline


def _print(report, out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..validate import gate_table, summary_table

    console = Console(width=160)
    for m in report.models:  # which provider ran each model, in what precision
        typer.echo(f"{m.name}: {m.info.get('provider')} ({m.info.get('precision')})")
    for title, (header, rows) in (
        ("Models (reference: value [95% CI]; others: value (delta))", summary_table(report)),
        ("Gates", gate_table(report)),
    ):
        if not rows:
            continue
        table = Table(title=title, title_justify="left")
        for h in header:
            table.add_column(h, overflow="fold")
        for row in rows:
            style = "red" if "FAIL" in row else ("dim" if "skipped" in row else None)
            table.add_row(*row, style=style)
        console.print(table)
    for w in report.warnings:
        typer.secho(f"warning: {w}", fg="yellow", err=True)
    verdict = "PASSED" if report.passed else "FAILED"
    typer.echo(f"{verdict}; report -> {out_dir}")


@handles_errors
def validate_cmd(
    model: Annotated[
        list[Path],
        typer.Option(
            "--model",
            "-m",
            help="ONNX model (repeat); the first is the reference for deltas and gates",
        ),
    ],
    data: Annotated[Path, typer.Option("--data", help="npz with x [N, *F] and labels y [N]")],
    output: Annotated[Path, typer.Option("--output", "-o", help="report directory")],
    baseline: Annotated[
        Path | None, typer.Option(help="deterministic model, shown but not gated")
    ] = None,
    ood: Annotated[Path | None, typer.Option(help="npz with OOD inputs x [M, *F]")] = None,
    samples: Annotated[int | None, typer.Option("--samples", help="MC samples S")] = None,
    seed: Annotated[int | None, typer.Option(help="Predictor / bootstrap seed")] = None,
    gates: Annotated[Path | None, typer.Option(help="gates YAML/JSON")] = None,
    name: Annotated[
        list[str] | None,
        typer.Option(
            "--name",
            help="model names in --model order (one more names the baseline); default: file stems",
        ),
    ] = None,
    provider: Annotated[str | None, typer.Option(help="auto|cpu|openvino|dnnl")] = None,
    threads: Annotated[int | None, typer.Option(help="intra-op threads")] = None,
    precision: Annotated[
        str | None, typer.Option(help="candidates' precision fp32|bf16 (bf16: OpenVINO)")
    ] = None,
    bootstrap: Annotated[int | None, typer.Option(help="bootstrap replicates (0 = none)")] = None,
    mc_repeats: Annotated[
        int | None, typer.Option(help="extra seeds for the MC-noise estimate (0 = none)")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="ValidateConfig YAML/JSON")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="write PNG plots")] = True,
) -> None:
    """Compare models (fp32 BNN, int8 QBNN, ...) on labelled data and apply uncertainty gates."""
    from ..common import check_output_dir
    from ..validate import ValidateConfig, load_gates, validate, write_report

    check_output_dir(output)
    cfg = ValidateConfig.load(config) if config else ValidateConfig()
    given = dict(
        num_samples=samples,
        seed=seed,
        threads=threads,
        bootstrap=bootstrap,
        mc_repeats=mc_repeats,
        provider=provider,
        precision=precision,
        gates=load_gates(gates) if gates else None,
    )
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    models, base = _names(model, name, baseline)
    report = write_report(
        validate(models, data, ood=ood, baseline=base, config=cfg), output, plots=plots
    )
    _print(report, output)
    if not report.passed:
        for cand, g in report.failed_gates:
            typer.echo(f"FAILED gate {g.name} ({cand}): {g.detail}", err=True)
        raise typer.Exit(1)
