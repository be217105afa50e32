"""``qbnn score``: batch scoring of a shard folder on Ray Data, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import handles_errors

__all__ = ["score_cmd"]


@handles_errors
def score_cmd(
    model: Annotated[Path, typer.Argument(help="compiled .onnx model")],
    inputs: Annotated[Path, typer.Option("--inputs", help="folder of .npz / .parquet shards")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder of Parquet outputs")],
    samples: Annotated[int | None, typer.Option("--samples", help="MC samples S")] = None,
    seed: Annotated[int, typer.Option(help="base seed (each shard derives its own)")] = 0,
    provider: Annotated[str, typer.Option(help="auto|cpu|openvino|dnnl")] = "auto",
    threads: Annotated[int, typer.Option(help="intra-op threads per worker")] = 1,
    workers: Annotated[int, typer.Option(help="Ray workers scoring shards at once")] = 2,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (e.g. auto)")] = None,
) -> None:
    """Score every shard not yet scored; re-running resumes an interrupted run."""
    from qbnn.pipeline.common import check_output_dir
    from qbnn.serve import ScoreConfig, score

    check_output_dir(output)
    cfg = ScoreConfig(num_samples=samples, seed=seed, provider=provider, threads=threads,
                      workers=workers, address=address)  # fmt: skip
    res = score(model, inputs, output, cfg)
    rate = res.rows / res.seconds if res.seconds > 0 else 0.0
    typer.echo(f"scored {len(res.scored)} shards ({res.rows} rows, {rate:.0f} rows/s), skipped "
               f"{len(res.skipped)} already scored -> {output}")  # fmt: skip
