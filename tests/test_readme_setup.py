"""The README's set-up section against what CI runs (issue 24, item 4).

- The torch pin is the same in both README commands, the stock-machine CPU line and
  ``.ci/run``; the CPU line names PyTorch's CPU wheel index.
- The README's test command ends in exactly the pytest line ``.ci/run`` runs.
- The README's "about N tests" is within 25% of the tests pytest collects.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def _setup() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Set-up")
    return text[start : text.index("\n## ", start + 1)]


def _commands(section: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", section, re.S)


def _ci() -> str:
    return (ROOT / ".ci" / "run").read_text()


def test_torch_pin_and_cpu_index_agree_with_ci():
    ci_pins = set(re.findall(r"install -q (torch==[\d.]+)", _ci()))
    assert len(ci_pins) == 1, ci_pins
    (pin,) = ci_pins
    commands = _commands(_setup())
    demo, tests, cpu = commands[0], commands[1], commands[2]
    assert f"pip install {pin} " in demo and f"pip install {pin} " in tests
    assert cpu == f"pip install {pin} {CPU_INDEX}"


def test_readme_test_command_is_the_one_ci_runs():
    marker = "# --- README test command (keep identical) ---\n"
    ci_line = _ci().split(marker, 1)[1].splitlines()[0].strip()
    tests = _commands(_setup())[1]
    assert tests.endswith("&& " + ci_line), (tests, ci_line)


def _collected(config: pytest.Config, items: int) -> int:
    """Tests in the whole suite: this session's when it collected all of it, else a
    ``pytest --collect-only`` run (about 10 s)."""
    whole = {ROOT, ROOT / "tests"}
    opt = config.option
    if (
        all((Path(config.invocation_params.dir) / a).resolve() in whole for a in config.args)
        and not opt.keyword
        and not opt.markexpr
        and not getattr(opt, "lf", False)
        and not getattr(opt, "deselect", None)
    ):
        return items
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    found = re.search(r"^(\d+) tests? collected", out.stdout, re.M)
    assert found, out.stdout[-2000:] + out.stderr[-2000:]
    return int(found.group(1))


def test_stated_test_count_is_close(request):
    stated = re.search(r"about ([\d,]+) tests", _setup())
    assert stated, "the set-up section no longer says how many tests the command runs"
    n = int(stated.group(1).replace(",", ""))
    actual = _collected(request.config, len(request.session.items))
    assert abs(actual - n) <= 0.25 * n, (
        f"README says about {n:,} tests, pytest collects {actual:,}: update the set-up section"
    )
