"""``qbnn compress``: mixed precision / pruning from a plan or the posterior, or weight sharing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from qbnn.runtimes.errors import UsageError

from .common import handles_errors

__all__ = ["compress_cmd"]


@handles_errors
def compress_cmd(
    model: Annotated[Path, typer.Argument(help="compiled fp32 .onnx model")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output .onnx")],
    plan: Annotated[Path | None, typer.Option("--plan", help="precision plan YAML/JSON")] = None,
    auto: Annotated[
        bool, typer.Option("--auto", help="plan from the posterior, searched under the gates")
    ] = False,
    share: Annotated[
        bool, typer.Option("--share", help="weight sharing from the posterior (codebook)")
    ] = False,
    calib: Annotated[Path | None, typer.Option("--calib", help="npz with key 'x'")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="npz with x and labels y")] = None,
    ood: Annotated[Path | None, typer.Option("--ood", help="npz with OOD inputs x")] = None,
    budget: Annotated[
        float | None, typer.Option("--budget", help="--auto: largest relative BOPs, e.g. 0.03")
    ] = None,
    k: Annotated[float, typer.Option("--k", help="--share: tolerance in sigmas")] = 2.0,
    max_unique: Annotated[
        int, typer.Option("--max-unique", help="--share: shared values per layer")
    ] = 16,
    match: Annotated[
        float, typer.Option("--match", help="--share: variance matching of draws, 0-1")
    ] = 0.0,
    max_trials: Annotated[
        int, typer.Option("--max-trials", help="--auto: plans validated at most")
    ] = 12,
    sigma_bits: Annotated[
        int, typer.Option("--sigma-bits", help="--share: log-grid bits of sigma (4, 8; 32 = fp32)")
    ] = 4,
    snr: Annotated[
        float, typer.Option("--snr", help="--share: prune weights with |mu|/sigma below this")
    ] = 0.0,
    samples: Annotated[int | None, typer.Option("--samples", help="validate MC samples")] = None,
    gates: Annotated[Path | None, typer.Option(help="gates YAML/JSON")] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="directory for compress.json and plots")
    ] = None,
) -> None:
    """Compress a compiled model: --plan PLAN | --auto | --share; gated with --data."""
    from ..common import check_output_dir, check_output_file
    from ..compress import AutoConfig, ShareConfig, compress, gate_verdict, load_plan
    from ..validate import ValidateConfig, load_gates

    if sum((plan is not None, auto, share)) != 1:
        raise UsageError("give exactly one of --plan PLAN, --auto or --share")
    if budget is not None and not auto:
        raise UsageError("--budget applies to --auto only")
    check_output_file(output)
    if report is not None:
        check_output_dir(report, "--report")
    vcfg = ValidateConfig()
    given = {"num_samples": samples, "gates": load_gates(gates) if gates else None}
    vcfg = replace(vcfg, **{k_: v for k_, v in given.items() if v is not None})
    out = compress(
        model,
        output,
        plan=load_plan(plan) if plan is not None else None,
        auto=AutoConfig(budget=budget, max_trials=max_trials) if auto else None,
        share=ShareConfig(k=k, max_unique=max_unique, match=match, sigma_bits=sigma_bits, snr=snr)
        if share
        else None,
        calib=calib,
        data=data,
        ood=ood,
        validate_config=vcfg,
        report_dir=report,
        log=lambda s: typer.echo(s, err=True),
    )
    rec = out.record
    rel = rec["relative_bops"]
    typer.echo(
        f"compressed -> {output}: relative BOPs {'n/a' if rel is None else f'{rel:.4f}'}, "
        f"{rec['unique_weights']} unique weights, {rec['size_bytes']} bytes "
        f"({rec['size_vs_fp32']:.3f}x fp32)"
    )
    if report is not None:
        typer.echo(f"report -> {report / 'compress.json'}")
    verdict = gate_verdict(rec, model.name)
    if verdict is not None:
        typer.echo(verdict)
    if rec["gates_passed"] is False:
        raise typer.Exit(1)
