"""Atomic file writes: no half-written artifact is ever left behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import ConfigError

__all__ = ["atomic_path"]


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class atomic_path:  # noqa: N801 - used like a function in a with-statement
    """``with atomic_path(dst) as tmp:`` write to ``tmp``; it is renamed to ``dst`` on success
    (with the usual file permissions) and removed on failure."""

    def __init__(self, dst: str | Path) -> None:
        self.dst = Path(dst)

    def __enter__(self) -> Path:
        if not self.dst.parent.is_dir():
            raise ConfigError(f"output directory {self.dst.parent} does not exist")
        if not os.access(self.dst.parent, os.W_OK):
            raise ConfigError(f"output directory {self.dst.parent} is not writable")
        fd, name = tempfile.mkstemp(dir=self.dst.parent, prefix=f".{self.dst.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.chmod(self.tmp, _file_mode())
            os.replace(self.tmp, self.dst)
        else:
            self.tmp.unlink(missing_ok=True)
