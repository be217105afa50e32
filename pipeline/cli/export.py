"""``qbnn export``: a trained torch BNN -> a stochastic ONNX graph."""

from __future__ import annotations

import ast
import importlib.util
import re
from functools import cache
from pathlib import Path
from typing import Annotated

import typer

from qbnn.runtimes.errors import QbnnError

from .common import handles_errors

__all__ = ["cli_spelling", "export_cmd", "registered_families"]

#: the exporter's keyword hints, as ``qbnn export`` spells them
_SPELLING = (
    (re.compile(r"\b(posterior|sampling|task|head)='([^']*)'"), r"--\1 \2"),
    (re.compile(r"\boutput_key='([^']*)'"), r"--output-key \1"),
    (re.compile(r"\boutput_key=(?=\d)"), "--output-key "),
    (re.compile(r"\bheteroscedastic=True\b"), "--heteroscedastic"),
    (re.compile(r"\bpass noise_variance\b"), "pass --noise-variance"),
    (re.compile(r"\bpass num_samples\b"), "pass --samples"),
    (re.compile(r"\bbn_update=<training inputs> \(--bn-update\)"), "--bn-update <npz>"),
)


@cache
def registered_families() -> dict[str, tuple[str, ...]]:
    """``{family: sampling modes}`` as the modules of ``qbnn.exporters.families`` register them
    (``@register_exporter("name", modes=(...))``), read from their source so that ``qbnn
    --help`` does not import torch; ``tests/pipeline/cli/test_help.py`` holds them to the live
    registry."""
    spec = importlib.util.find_spec("qbnn.exporters")  # imports qbnn only, not the exporters
    out: dict[str, tuple[str, ...]] = {}
    for root in spec.submodule_search_locations if spec else ():
        for path in sorted((Path(root) / "families").glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "id", "") == "register_exporter"
                ):
                    continue
                modes = next((k.value for k in node.keywords if k.arg == "modes"), None)
                out[ast.literal_eval(node.args[0])] = (
                    tuple(ast.literal_eval(modes)) if modes else ()
                )
    return dict(sorted(out.items()))


def _posterior_help() -> str:
    return ", ".join(["auto", *registered_families()])


def _sampling_help() -> str:
    modes = dict.fromkeys(m for ms in registered_families().values() for m in ms)
    return ", ".join(f"{m}:K" if m == "frozen" else m for m in modes) + " (default per family)"


def cli_spelling(message: str) -> str:
    """An exporter message with its keyword hints (``posterior='mcdropout'``) spelled as the
    command's flags (``--posterior mcdropout``)."""
    for pattern, repl in _SPELLING:
        message = pattern.sub(repl, message)
    return message


@handles_errors
def export_cmd(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="module:factory returning the torch model (modules in the working "
            "directory are importable, as with python -m)",
        ),
    ],
    input_shape: Annotated[str, typer.Option("--input-shape", help="feature shape, e.g. 3,32,32")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output .onnx path")],
    weights: Annotated[Path | None, typer.Option("--weights", help="state-dict checkpoint")] = None,
    posterior: Annotated[str, typer.Option(help=_posterior_help())] = "auto",
    sampling: Annotated[str | None, typer.Option(help=_sampling_help())] = None,
    samples: Annotated[int, typer.Option("--samples", help="default MC samples S")] = 16,
    seed: Annotated[int | None, typer.Option(help="fix every random node's seed")] = None,
    task: Annotated[
        str, typer.Option(help="classification (default) or regression", show_default=False)
    ] = "classification",
    batch: Annotated[int, typer.Option(help="example batch for the self-check")] = 4,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="self-check")] = True,
    heteroscedastic: Annotated[
        bool,
        typer.Option("--heteroscedastic", help="regression head outputs [mean, log-variance]"),
    ] = False,
    noise_variance: Annotated[
        float | None,
        typer.Option(help="regression: observation-noise variance added to pred_variance"),
    ] = None,
    head: Annotated[
        str | None,
        typer.Option(
            help="classifier output: logits, probs, log_probs, multilabel (K independent "
            "sigmoid labels from logits) or multilabel_probs (default: detected)"
        ),
    ] = None,
    output_key: Annotated[
        str | None,
        typer.Option(
            "--output-key",
            help="the prediction of a forward that returns a dict (its key) or a tuple (its "
            "index); default: the dict's one batch-shaped tensor",
        ),
    ] = None,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint", help="allow full unpickling of --weights (trusted files only)"
        ),
    ] = False,
    example_data: Annotated[
        Path | None,
        typer.Option(
            "--example",
            help="npz with key 'x' [B, *feature_shape]: the example input, in its own dtype "
            "(int64 token ids for text models); default: --batch standard-normal rows",
        ),
    ] = None,
    bn_update: Annotated[
        Path | None,
        typer.Option(
            "--bn-update",
            help="npz with key 'x' (training inputs): recompute BatchNorm statistics per "
            "frozen:K draw (SWAG's bn_update)",
        ),
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 18)")] = 18,
    verify_samples: Annotated[
        int, typer.Option("--verify-samples", help="MC samples of the self-check (>= 2)")
    ] = 64,
    source: Annotated[
        str | None, typer.Option(help="qbnn.source metadata (default: trainer and version)")
    ] = None,
    split: Annotated[
        bool,
        typer.Option(
            "--split/--no-split",
            help="run the deterministic part once per call, not once per MC sample "
            "(--no-split: the whole network per sample, for A/B measurements)",
        ),
    ] = True,
) -> None:
    """Export a trained torch BNN to a stochastic ONNX graph."""
    from ..common import check_output_file, importable, load_npz, require

    require(("torch",), "qbnn export")
    check_output_file(output)
    import torch

    from qbnn.exporters import ExportConfig, export_model
    from qbnn.exporters.usermodels import load_model, parse_shape

    shape = parse_shape(input_shape)
    with importable(Path.cwd()):  # factory modules in the working directory, as python -m
        net = load_model(model, weights, trust=trust_checkpoint)
    gen = torch.Generator().manual_seed(0)
    example = torch.randn((max(batch, 1), *shape), generator=gen)
    if example_data is not None:
        example = torch.from_numpy(load_npz(example_data, require=("x",))["x"])
    bn_data = None
    if bn_update is not None:
        bn_data = torch.from_numpy(load_npz(bn_update, require=("x",))["x"]).float()
    try:
        cfg = ExportConfig(
            posterior=posterior,
            sampling=sampling,
            num_samples=samples,
            task=task,
            seed=seed,
            verify=verify,
            verify_samples=verify_samples,
            opset=opset,
            source=source,
            heteroscedastic=heteroscedastic,
            noise_variance=noise_variance,
            head=head,
            split=split,
            output_key=output_key,
        )
        result = export_model(net, example, output, config=cfg, bn_update=bn_data)
    except QbnnError as exc:
        message = cli_spelling(str(exc))
        if message == str(exc):
            raise
        raise type(exc)(message) from exc
    if result.fidelity is not None:
        typer.echo(result.fidelity.summary())
        for w in result.fidelity.warnings:
            typer.echo(f"warning: {w}", err=True)
    for note in result.notes:
        if note.startswith("warning: ") or note.startswith("BatchNorm"):
            typer.echo(note if note.startswith("warning") else f"note: {note}", err=True)
    typer.echo(f"exported {result.family} ({result.sampling}) -> {result.path}")
    typer.echo(_split_line(result.path, len(example), samples))


def _split_line(path: Path, batch: int, samples: int) -> str:
    """What runs once per call and what per MC sample, at the export's batch and S (a report
    line: a graph it cannot read is said, never an export failure)."""
    import onnx

    from qbnn.runtimes import split_report

    try:
        model = onnx.load(str(path), load_external_data=False)  # shapes only
        return split_report(model, max(batch, 1), max(samples, 1)).summary()
    except Exception as exc:  # noqa: BLE001  the file is written; only the estimate is lost
        return f"note: FLOPs run once vs per sample not estimated ({type(exc).__name__}: {exc})"
