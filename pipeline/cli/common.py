"""The shared pieces of the ``qbnn`` command line: the Typer app, error handling, progress.

Errors of the :class:`QbnnError` family are printed as one line (exit 1; 2 for usage errors),
never as a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Annotated

import click
import typer
from typer.core import TyperCommand, TyperGroup

from qbnn.runtimes.errors import QbnnError, UsageError

from ..common import install_hint, missing_module

__all__ = ["QbnnCommand", "QbnnGroup", "app", "handles_errors", "progress_bar"]


def _tidy(params: list) -> list:
    """Help as written: option help is shown verbatim (Rich would read "[mean, log-variance]"
    as markup and swallow it), and flags show no ``<bool>`` value type (they take none)."""
    from rich.markup import escape

    for p in params:
        if getattr(p, "_qbnn_tidy", False):
            continue
        if getattr(p, "is_flag", False):
            p.metavar = ""
        if getattr(p, "help", None):
            p.help = escape(p.help)
        p._qbnn_tidy = True
    return params


class QbnnCommand(TyperCommand):
    """A command whose ``--help`` shows option help verbatim and flags without a type."""

    def get_params(self, ctx: click.Context) -> list:
        return _tidy(super().get_params(ctx))


class QbnnGroup(TyperGroup):
    """The ``qbnn`` group: commands in registration (pipeline) order, help as written."""

    def get_params(self, ctx: click.Context) -> list:
        return _tidy(super().get_params(ctx))


app = typer.Typer(
    name="qbnn",
    help="Compile, quantize, validate and benchmark Bayesian neural networks as ONNX graphs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=QbnnGroup,
)


def handles_errors(fn):
    """Turn qbnn errors into one clear stderr line and an exit code.

    A missing optional library (torch, Bayesian-Torch, laplace-torch and its backends), raised
    directly or as the cause of a qbnn error, is named with the command that installs it.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QbnnError as exc:
            hint = install_hint(missing_module(exc))
            message = str(exc) if hint is None or hint in str(exc) else f"{exc}; {hint}"
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2 if isinstance(exc, UsageError) else 1) from None
        except ModuleNotFoundError as exc:
            hint = install_hint(exc.name)
            if hint is None:
                raise
            typer.echo(f"error: {hint}", err=True)
            raise typer.Exit(1) from None

    return wrapper


@contextlib.contextmanager
def progress_bar(label: str, total: int):
    """A rich progress bar on stderr for long runs; yields ``advance(done, total)``."""
    from rich.progress import Progress

    with Progress(transient=True, console=_stderr_console()) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done, _total: bar.update(task, completed=done)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
