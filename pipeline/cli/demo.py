"""``qbnn demo``: train on the bundled digits and run the whole pipeline (no network)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer

from .common import handles_errors
from .run import print_result, stage_progress

__all__ = ["demo_cmd", "training_progress"]


@contextlib.contextmanager
def training_progress():
    """Per-epoch training bars on stderr (rich); yields ``update(model, epoch, epochs)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("training {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        tasks: dict[str, int] = {}

        def update(model: str, epoch: int, epochs: int) -> None:
            if model not in tasks:
                tasks[model] = bar.add_task(model, total=epochs)
            bar.update(tasks[model], completed=epoch)

        yield update


def _log(message: str) -> None:
    typer.echo(message, err=True)


@handles_errors
def demo_cmd(
    out: Annotated[Path, typer.Option(help="artifacts root")] = Path("artifacts"),
    quick: Annotated[bool, typer.Option(help="reduced grids (for tests)")] = False,
    force: Annotated[bool, typer.Option(help="retrain and re-run every stage")] = False,
) -> None:
    """Train a Bayesian CNN on the bundled digits and run the whole pipeline (no network)."""
    from ..common import check_output_dir
    from ..run import prepare_demo, run

    check_output_dir(out, "--out")
    t0 = time.perf_counter()
    with training_progress() as update:
        cfg = prepare_demo(out, quick=quick, retrain=force, log=_log, progress=update)
    result = run(cfg, force=force, progress=stage_progress())
    print_result(result)
    typer.echo(
        f"demo finished in {time.perf_counter() - t0:.0f}s; report: "
        f"{result.root / 'report' / 'report.md'}"
    )
    if result.gates_passed is False:
        raise typer.Exit(1)
