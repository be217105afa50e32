"""Every number in the README's "Measured results" comes from a recorded result.

Each bullet of that section names the result files it quotes (``benchmarks/results/*.md``);
every decimal number in the bullet (``2.46x``, ``0.9931``, ``1.79``) must appear verbatim in one
of those files, so a re-recorded benchmark that changes a number fails here until the README
follows.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Measured results"
NUMBER = re.compile(r"(?<![\w.])(\d+\.\d+)(?![\w.])")
SOURCE = re.compile(r"benchmarks/results/[\w.-]+\.md")


def _bullets() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    body = text[start : end if end > 0 else None]
    return [b.strip() for b in re.split(r"\n- ", body)[1:]]


def test_measured_results_section_cites_its_sources():
    bullets = _bullets()
    assert bullets, "README has no 'Measured results' bullets"
    for b in bullets:
        assert SOURCE.search(b), f"bullet cites no benchmarks/results file: {b[:80]}"


@pytest.mark.parametrize("bullet", _bullets(), ids=lambda b: b[:40])
def test_every_number_is_in_a_cited_result(bullet):
    sources = [ROOT / s for s in SOURCE.findall(bullet)]
    texts = [p.read_text() for p in sources if p.is_file()]
    assert len(texts) == len(sources), f"missing result file among {sources}"
    missing = [n for n in NUMBER.findall(bullet) if not any(n in t for t in texts)]
    assert not missing, f"numbers not found in {[s.name for s in sources]}: {missing}"
