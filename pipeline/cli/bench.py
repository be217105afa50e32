"""``qbnn bench``: latency and throughput over a (batch, S) grid; bench.json, table, plot."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from qbnn.runtimes.errors import UsageError

from .common import handles_errors, progress_bar

__all__ = ["bench_cmd", "parse_list"]


def parse_list(text: str, option: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``; an empty item is a malformed list (:class:`UsageError`)."""
    items = tuple(p.strip() for p in text.split(","))
    if not all(items):
        raise UsageError(
            f"{option} must be a comma-separated list without empty items; got '{text}'"
        )
    return items


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in parse_list(text, option))
    except ValueError:
        raise UsageError(
            f"{option} must be integers separated by commas (e.g. 1,8,32); got '{text}'"
        ) from None


@handles_errors
def bench_cmd(
    models: Annotated[list[Path], typer.Argument(help="ONNX models (named by file stem)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="bench.json path")],
    batch: Annotated[str | None, typer.Option("--batch", help="batch sizes [1,32]")] = None,
    samples: Annotated[str | None, typer.Option("--samples", help="MC samples S [1,8,32]")] = None,
    provider: Annotated[
        str | None, typer.Option("--provider", help="auto|cpu|openvino|dnnl, comma-separated")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="intra-op threads")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32|bf16 (bf16: OpenVINO)")] = None,
    repeats: Annotated[int | None, typer.Option(help="timed runs per cell [20]")] = None,
    warmup: Annotated[int | None, typer.Option(help="untimed runs per cell [3]")] = None,
    min_time: Annotated[float | None, typer.Option(help="minimum timed seconds per cell")] = None,
    seed: Annotated[int | None, typer.Option(help="noise and input seed [0]")] = None,
    interleave: Annotated[
        bool | None, typer.Option("--interleave/--no-interleave", help="round-robin models")
    ] = None,
    memory: Annotated[
        bool | None, typer.Option("--memory/--no-memory", help="probe peak memory")
    ] = None,
    baseline: Annotated[
        str | None, typer.Option(help="model name (file stem) for throughput ratios")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="PNG path (default: the output path with .png)")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="BenchConfig YAML/JSON")] = None,
) -> None:
    """Time compiled models over batch sizes and MC sample counts, interleaved across models."""
    from ..bench import BenchConfig, bench, model_names, print_tables, write_bench
    from ..common import check_output_file

    check_output_file(output)
    plot = check_output_file(plot or output.with_suffix(".png"), "--plot")

    cfg = BenchConfig.load(config) if config else BenchConfig()
    given = dict(
        batches=None if batch is None else _ints(batch, "--batch"),
        samples=None if samples is None else _ints(samples, "--samples"),
        providers=None if provider is None else parse_list(provider, "--provider"),
        threads=threads, precision=precision, repeats=repeats, warmup=warmup,
        min_time_s=min_time, seed=seed, interleave=interleave, measure_memory=memory,
    )  # fmt: skip
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    named = model_names(models)
    if baseline is not None and baseline not in named:
        raise UsageError(f"--baseline '{baseline}' is not a model name; names: {list(named)}")
    with progress_bar("benchmarking", 100) as advance:
        result = bench(named, cfg, progress=lambda done, total: advance(100 * done / total, 100))
    print_tables(result, baseline)
    output, plot = write_bench(result, output, plot, baseline)
    typer.echo(f"bench -> {output}, plot -> {plot}")
