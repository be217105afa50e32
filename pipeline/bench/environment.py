"""What a benchmark ran on (CPU, cores, library versions) and how big a model's files are."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx.external_data_helper import uses_external_data

from qbnn.runtimes import available_providers
from qbnn.runtimes.errors import ModelLoadError

__all__ = ["Environment", "cpu_model", "environment", "model_file_bytes"]


@dataclass(frozen=True)
class Environment:
    """The machine and software of a run. ``cores_usable``: CPUs this process may run on
    (affinity); ``threads``: the configured intra-op threads (``None``: ONNX Runtime default)."""

    cpu: str
    cores_logical: int | None
    cores_physical: int | None
    cores_usable: int | None
    threads: int | None
    onnxruntime: str
    ort_providers: tuple[str, ...]
    providers_available: tuple[str, ...]
    numpy: str
    onnx: str
    python: str
    platform: str


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The ``model name`` of the first CPU in ``/proc/cpuinfo`` (else ``platform.processor()``)."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(threads: int | None) -> Environment:
    """Describe this machine and the installed numpy / onnx / onnxruntime."""
    import numpy as np
    import onnxruntime as ort
    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return Environment(
        cpu=cpu_model(),
        cores_logical=os.cpu_count(),
        cores_physical=psutil.cpu_count(logical=False),
        cores_usable=usable,
        threads=threads,
        onnxruntime=ort.__version__,
        ort_providers=tuple(ort.get_available_providers()),
        providers_available=tuple(available_providers()),
        numpy=np.__version__,
        onnx=onnx.__version__,
        python=sys.version.split()[0],
        platform=platform.platform(),
    )


def model_file_bytes(path: str | Path) -> int:
    """Bytes on disk of an ONNX model: the ``.onnx`` file plus each external-data file once."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not an ONNX model ({type(exc).__name__})") from exc
    files = set()
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            loc = next((e.value for e in tensor.external_data if e.key == "location"), "")
            files.add(path.parent / loc)
    return path.stat().st_size + sum(f.stat().st_size for f in files if f.is_file())
