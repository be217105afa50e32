"""Importing user modules (model factories) from a folder, as ``python -m`` does."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["importable"]


@contextmanager
def importable(folder: str | Path) -> Iterator[None]:
    """Put ``folder`` first on ``sys.path`` for the duration of the block (a factory module
    beside a config file, or in the working directory for ``qbnn export``)."""
    entry = str(Path(folder).resolve())
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)
