"""Issue 12, section 4: ``--help`` reads as written. Commands are listed in pipeline order,
every option's help text is shown verbatim (no Rich markup swallowed), flags show no value
type, and the ``--posterior`` list names every registered family without being cut."""

from __future__ import annotations

import re

import click
import pytest
import typer
from typer.testing import CliRunner

from qbnn.exporters import known_families
from qbnn.pipeline.cli import COMMANDS, app

runner = CliRunner()
ORDER = [
    "export",
    "quantize",
    "compress",
    "predict",
    "validate",
    "bench",
    "run",
    "serve",
    "score",
    "demo",
]


def _help(*args: str, width: int = 120) -> str:
    r = runner.invoke(app, [*args, "--help"], env={"COLUMNS": str(width), "TERM": "dumb"})
    assert r.exit_code == 0, r.output
    return r.output


def _flat(text: str) -> str:
    """Help text without box drawing and whitespace, so wrapped lines compare equal."""
    return re.sub(r"[\s│╭╮╰╯─]+", "", text)


def test_commands_are_listed_in_pipeline_order():
    assert list(COMMANDS) == ORDER
    text = _help()
    listed = [m.group(1) for m in re.finditer(r"^│ (\w+) {2,}", text, re.M)]
    assert listed == ORDER, text


@pytest.mark.parametrize("command", ORDER)
def test_option_help_is_verbatim_and_flags_have_no_type(command):
    text = _help(command)
    assert "<bool>" not in text
    cmd = typer.main.get_command(app).commands[command]
    for param in cmd.params:
        if isinstance(param, click.Option) and param.help:
            shown = param.help.replace("\\[", "[")  # the escape Rich undoes when rendering
            assert _flat(shown) in _flat(text), (command, param.name, shown)


def test_markup_like_help_survives():
    text = _help("export")
    assert "[mean, log-variance]" in text


def test_posterior_list_names_every_family_uncut():
    text = _help("export", width=120)
    block = text[text.index("--posterior") : text.index("--sampling")]
    assert "…" not in block
    for family in ["auto", *known_families()]:
        assert re.search(rf"\b{family}\b", block), (family, block)


def test_help_lists_read_from_the_family_modules_match_the_registry():
    """``qbnn export --help`` reads families and modes from the family modules' source (no
    torch); they are exactly the live registry's."""
    from qbnn.pipeline.cli.export import registered_families

    assert registered_families() == {f: e.modes for f, e in known_families().items()}


@pytest.mark.parametrize("command", ["qbnn", *ORDER])
def test_help_is_not_cut_at_80_columns(command):
    """Issue 24, item 4: at 80 columns Rich cut words that did not fit their column
    (``pkg.module:factor…``, ``classification|re…``, ``--no-heteroscedas…``)."""
    text = _help(*([] if command == "qbnn" else [command]), width=80)
    cut = [line for line in text.splitlines() if "…" in line]
    assert not cut, "\n".join(cut)
    assert max(map(len, text.splitlines())) <= 80
