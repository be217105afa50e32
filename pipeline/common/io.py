"""npz input/output with clear errors and atomic writes; the rule for output paths.

The rule, the same for every command and checked before any work: the folder that will hold
an output must already exist (qbnn never creates folder trees you may have mistyped); an output
*directory* (a validate report, the demo's artifacts root) is created itself when missing; an
existing directory is never overwritten by a file, nor a file by a directory.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from qbnn.runtimes.atomic import atomic_path
from qbnn.runtimes.errors import ConfigError, ModelLoadError, UsageError

__all__ = ["atomic_path", "check_output_dir", "check_output_file", "load_npz", "save_npz"]


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


def _parent_exists(path: Path, option: str) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(
            f"{option} {path}: the folder {parent} does not exist; create it first "
            f"(mkdir -p {parent}) or choose another path"
        )


def check_output_file(path: str | Path, option: str = "--output") -> Path:
    """Check (before any work) that a file can be written at ``path``; returns it."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory; give a file path")
    _parent_exists(path, option)
    return path


def check_output_dir(path: str | Path, option: str = "--output") -> Path:
    """Check (before any work) that ``path`` can be (or already is) an output directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is an existing file; give a directory path")
    _parent_exists(path, option)
    return path
