"""npz input/output with clear errors and atomic writes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from qbnn.runtimes.atomic import atomic_path
from qbnn.runtimes.errors import ConfigError, ModelLoadError

__all__ = ["atomic_path", "load_npz", "save_npz"]


def load_npz(path: str | Path, require: Iterable[str] = ("x",)) -> dict[str, np.ndarray]:
    """Load an ``.npz`` (no pickles) and check that the ``require``d keys are there."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"data file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable .npz file ({exc})") from exc
    missing = [k for k in require if k not in data]
    if missing:
        raise ConfigError(
            f"{path} lacks key(s) {missing}; it has {sorted(data)} (expected {list(require)})"
        )
    if "x" in data and len(data["x"]) == 0:
        raise ConfigError(f"{path}: 'x' is empty")
    return data


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)
