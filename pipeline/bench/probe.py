"""Helpers of the ``bench`` stage that also run in a fresh process: feeds and peak memory.

Peak resident memory is measured honestly, outside the benchmarking process (whose peak holds
every other session and the timing history):

1. a *baseline* child process imports numpy, onnx, onnxruntime and :mod:`qbnn.runtimes` (the
   same imports as a measuring child) and reports its peak RSS without loading a model;
2. one child per (model, provider) does the same imports, opens the model through
   :func:`qbnn.runtimes.open_session` (same provider, threads and seed as the timing runs), runs
   the largest cell (largest batch x largest S) once and reports its peak RSS.

Peak RSS is the process's high-water mark: ``VmHWM`` of ``/proc/self/status`` on Linux, else
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (reported in KiB). On Linux ``ru_maxrss`` would be
wrong here: the kernel carries the high-water mark of the forking process across ``fork`` and
``execve``, so every child would report at least the benchmarking process's own peak (measured:
a child of a process holding 300 MB reported 327 MB by ``ru_maxrss``, 11 MB by ``VmHWM``).

The model's memory is child minus baseline: the parsed model proto and its serialized copy, the
ONNX Runtime session (optimized graph, weights, arena) and the activations of one run of the
largest cell. It is a whole-process peak, so allocator slack is included, and so is ONNX
Runtime's fixed cost of a first session (code pages, thread pool, arena): about 10 MB for a
model of a few kB on this stack, so compare models by their difference above that floor.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

from qbnn.runtimes import ModelInfo, SessionOptions, open_session
from qbnn.runtimes.contract import NUM_SAMPLES
from qbnn.runtimes.errors import ConfigError

__all__ = ["make_feed", "peak_rss_kb", "probe_memory"]

_CHILD = "from qbnn.pipeline.bench.probe import _child_main; _child_main()"
_TIMEOUT_S = 900


def make_feed(info: ModelInfo, batch: int, samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Session feed for one cell: ``input [batch, *feature_shape]`` float32 standard normal
    (seeded; integer-input models get token ids 0 and 1, valid for any embedding with two or
    more rows) and, for qbnn models, ``num_samples`` int64 scalar = ``samples``."""
    dims = info.feature_shape
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise ConfigError(
            f"input '{info.input_name}' has feature shape {list(dims)} with a dynamic or unknown "
            "dimension; bench needs a fixed feature shape (export with a static feature shape)"
        )
    rng = np.random.default_rng(seed)
    want = np.dtype(info.input_dtype)
    if np.issubdtype(want, np.integer):
        x = rng.integers(0, 2, (batch, *dims)).astype(want)
    else:
        x = rng.standard_normal((batch, *dims)).astype(np.float32)
    feed = {info.input_name: x}
    if info.takes_num_samples:
        feed[NUM_SAMPLES] = np.array(samples, dtype=np.int64)
    return feed


def peak_rss_kb(status: str | Path = "/proc/self/status") -> int:
    """Peak resident set size of this process so far, in KiB (see the module docstring)."""
    try:
        for line in Path(status).read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def probe_memory(
    path: str | Path | None,
    *,
    provider: str = "cpu",
    threads: int | None = None,
    seed: int = 0,
    batch: int = 1,
    samples: int = 1,
    precision: str = "fp32",
) -> int:
    """Peak RSS (KiB) of a fresh process that opened ``path`` and ran ``(batch, samples)`` once;
    ``path=None`` measures the baseline (same imports, no model). ``provider`` is a resolved
    registry name. Raises ``RuntimeError`` (with the child's last stderr line) if it fails."""
    request = {
        "path": None if path is None else str(path),
        "provider": provider,
        "threads": threads,
        "seed": seed,
        "batch": batch,
        "samples": samples,
        "precision": precision,
    }
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(request)],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(
            f"memory probe of {path or 'the baseline'} exited with {proc.returncode}: {tail}"
        )
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_kb"])


def _child_main() -> None:
    """Entry point of a probe child: ``argv[1]`` is the JSON request of :func:`probe_memory`."""
    import onnxruntime  # noqa: F401  (the baseline imports it too)

    req = json.loads(sys.argv[1])
    if req["path"] is not None:
        opts = SessionOptions(
            provider=req["provider"], threads=req["threads"], precision=req["precision"]
        )
        sess, info, _ = open_session(req["path"], opts, req["seed"])
        sess.run(None, make_feed(info, req["batch"], req["samples"], req["seed"]))
    print(json.dumps({"peak_rss_kb": peak_rss_kb()}))
