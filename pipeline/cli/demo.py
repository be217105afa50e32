"""``qbnn demo``: train on the bundled digits and run the whole pipeline (no network)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from .common import handles_errors
from .run import print_result, stage_progress

__all__ = ["demo_cmd"]


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
    cfg = prepare_demo(out, quick=quick, retrain=force, log=lambda m: typer.echo(m, err=True))
    result = run(cfg, force=force, progress=stage_progress())
    print_result(result)
    typer.echo(
        f"demo finished in {time.perf_counter() - t0:.0f}s; report: "
        f"{result.root / 'report' / 'report.md'}"
    )
    if result.gates_passed is False:
        raise typer.Exit(1)
