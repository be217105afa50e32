"""npz input/output with clear errors and atomic writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

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


class atomic_path:  # noqa: N801 - used like a function in a with-statement
    """``with atomic_path(dst) as tmp:`` write to ``tmp``; it is renamed to ``dst`` on success
    and removed on failure, so no half-written artifact is left behind."""

    def __init__(self, dst: str | Path) -> None:
        self.dst = Path(dst)

    def __enter__(self) -> Path:
        if not self.dst.parent.is_dir():
            raise ConfigError(f"output directory {self.dst.parent} does not exist")
        fd, name = tempfile.mkstemp(
            dir=self.dst.parent, prefix=f".{self.dst.name}.", suffix=self.dst.suffix
        )
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.dst)
        else:
            self.tmp.unlink(missing_ok=True)


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)
