"""``qbnn run pipeline.yaml``: every stage from one config, with a manifest."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from .common import handles_errors

__all__ = ["print_result", "run_cmd", "stage_progress"]


def stage_progress():
    """A per-stage status line on stderr: ``[export] running ...`` -> ``done`` / ``skipped``."""
    from rich.console import Console

    console = Console(stderr=True)
    state: dict[str, float] = {}

    def report(stage: str, status: str) -> None:
        if status == "start":
            state[stage] = time.perf_counter()
            console.print(f"[bold]\\[{stage}][/bold] running ...")
        elif status == "done":
            console.print(
                f"[bold]\\[{stage}][/bold] done in {time.perf_counter() - state[stage]:.1f}s"
            )
        else:
            console.print(f"[bold]\\[{stage}][/bold] {status}")

    return report


def _report_warnings(root: Path) -> list[str]:
    path = root / "report" / "report.json"
    return json.loads(path.read_text()).get("warnings", []) if path.is_file() else []


def print_result(result) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ..run import speed_notes, summary_columns

    console = Console()
    if not console.is_terminal:
        console = Console(width=150)  # logs and CI: keep the table's columns readable
    if result.summary:
        columns = summary_columns(result.root)
        table = Table(title="qbnn run summary")
        for key, label in columns:
            table.add_column(label, justify="left" if key == "model" else "right")
        for row in result.summary:
            table.add_row(*[row.get(key, "-") for key, _ in columns])
        console.print(table)
    if result.gates_passed is not None:
        verdict = (
            "[green]all gates passed[/green]"
            if result.gates_passed
            else ("[red]gates failed:[/red] " + "; ".join(result.failed_gates))
        )
        console.print(verdict)
    for w in _report_warnings(result.root):
        console.print(f"[yellow]warning:[/yellow] {escape(w)}")
    for note in speed_notes(result.root):
        console.print(f"note: {escape(note)}")
    report = result.root / "report" / "report.md"
    if report.is_file():
        console.print(f"report: {report}")
        plots = sorted(p.name for p in (result.root / "report").glob("*.png"))
        if plots:
            console.print(f"plots:  {result.root / 'report'}/{{{', '.join(plots)}}}")
    bench = result.root / "bench" / "bench.json"
    if bench.is_file():
        console.print(f"bench:  {bench}")
    console.print(f"manifest: {result.manifest}")
    if result.skipped:
        console.print(f"skipped unchanged stages: {', '.join(result.skipped)} (--force re-runs)")


@handles_errors
def run_cmd(
    config: Annotated[Path, typer.Argument(help="pipeline.yaml")],
    force: Annotated[bool, typer.Option(help="re-run stages whose inputs are unchanged")] = False,
) -> None:
    """Run export -> quantize -> validate -> bench from one config, with a manifest."""
    from ..run import run

    result = run(config, force=force, progress=stage_progress())
    print_result(result)
    if result.gates_passed is False:
        raise typer.Exit(1)
