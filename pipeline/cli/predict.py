"""``qbnn predict``: MC-batched inference from an npz to an npz."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qbnn.runtimes.errors import RuntimeInputError

from .common import handles_errors, progress_bar

__all__ = ["predict_cmd"]


@handles_errors
def predict_cmd(
    model: Annotated[Path, typer.Argument(help="compiled .onnx model")],
    data: Annotated[Path, typer.Option("--data", help="npz with key 'x' [N, *feature_shape]")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output .npz")],
    samples: Annotated[int | None, typer.Option("--samples", help="MC samples S")] = None,
    provider: Annotated[str, typer.Option(help="auto, cpu, openvino or dnnl")] = "auto",
    precision: Annotated[
        str, typer.Option(help="fp32|bf16 (bf16: OpenVINO only, gate it like int8)")
    ] = "fp32",
    seed: Annotated[int | None, typer.Option(help="reproducible noise")] = None,
    threads: Annotated[int | None, typer.Option(help="intra-op threads")] = None,
    save_samples: Annotated[
        bool, typer.Option("--save-samples", help="also save probs [S, N, C]")
    ] = False,
    allow_nonfinite: Annotated[
        bool, typer.Option("--allow-nonfinite", help="accept NaN/inf inputs")
    ] = False,
    plain_output: Annotated[str, typer.Option(help="plain models: logits|probs")] = "logits",
) -> None:
    """MC-batched inference: npz in (key x), npz out (the Prediction fields)."""
    import numpy as np

    from qbnn.runtimes import Predictor, PredictorOptions

    from ..common import check_output_file, load_npz, save_npz

    check_output_file(output)
    x = load_npz(data, require=("x",))["x"]
    if not allow_nonfinite and np.issubdtype(x.dtype, np.floating):
        bad = int((~np.isfinite(x.reshape(len(x), -1))).any(axis=1).sum())
        if bad:
            raise RuntimeInputError(
                f"{data}: 'x' has NaN/inf values in {bad} of {len(x)} rows; clean them, or pass "
                "--allow-nonfinite to predict them anyway (their outputs are NaN)"
            )
    opts = PredictorOptions(allow_nonfinite=allow_nonfinite, plain_output=plain_output)
    pred = Predictor(
        model, provider=provider, threads=threads, seed=seed, precision=precision, options=opts
    )
    typer.echo(f"provider: {pred.describe()}", err=True)
    with progress_bar(f"predicting {len(x)} inputs", len(x)) as advance:
        result = pred.predict(x, samples, return_samples=save_samples, progress=advance)
    save_npz(output, result.as_dict())
    typer.echo(f"{len(x)} predictions (S={result.num_samples}) -> {output}")
