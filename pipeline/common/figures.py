"""Matplotlib figures written the way every report writes them: headless backend, laid out,
saved as PNG through a temporary file (no half-written image), then closed."""

from __future__ import annotations

from pathlib import Path

from qbnn.runtimes.atomic import atomic_path

__all__ = ["pyplot", "save_png"]


def pyplot():
    """``matplotlib.pyplot`` on the headless Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, *, dpi: int, bbox_inches: str | None = "tight") -> Path:
    """Lay out ``fig``, write it to ``path`` as PNG (temporary file, then rename) and close it,
    also when saving fails; returns ``path``."""
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches=bbox_inches)
    finally:
        pyplot().close(fig)
    return path
