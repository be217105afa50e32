"""Calibration data readers that drive every MC-sample path of a compiled model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qbnn.runtimes.contract import INPUT, NUM_SAMPLES
from qbnn.runtimes.errors import ConfigError

from ..common import load_npz
from .config import CalibrationConfig

__all__ = [
    "CalibrationRows",
    "calibration_file",
    "calibration_inputs",
    "looks_ordered",
    "make_reader",
    "select_rows",
]

log = logging.getLogger("qbnn.quantize")


def make_reader(
    x: np.ndarray, *, batch_size: int, num_samples: int | None, input_name: str = INPUT
):
    """A calibration reader over ``x [N, *feature_shape]`` float32 (integer token ids keep
    their integer dtype).

    Each batch feeds ``input`` and ``num_samples`` (int64 scalar S; ``None``: a graph without
    that input), so that a sampled graph's activation ranges are collected over S noisy copies
    of every input. Works with INC and ONNX Runtime.
    """
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self):
            if self.i >= len(x):
                return None
            dtype = x.dtype if np.issubdtype(x.dtype, np.integer) else np.float32
            batch = np.ascontiguousarray(x[self.i : self.i + batch_size], dtype=dtype)
            self.i += batch_size
            feed = {input_name: batch}
            if num_samples is not None:
                feed[NUM_SAMPLES] = np.array(num_samples, dtype=np.int64)
            return feed

        def rewind(self) -> None:
            self.i = 0

    return _Reader()


@dataclass(frozen=True)
class CalibrationRows:
    """Which rows of the calibration file calibrate: ``index [used] int64`` into the file's
    ``[N, ...]`` rows (a seeded permutation, so any prefix of it is spread over the file too),
    ``total`` = N, and ``ordered``: why the file looks ordered (None when it does not)."""

    index: np.ndarray
    total: int
    ordered: str | None

    @property
    def used(self) -> int:
        return int(self.index.shape[0])

    def describe(self) -> str:
        """One line: ``calibration: 256 of 1,024 rows (seeded sample spread over the file)``."""
        how = "all rows" if self.used == self.total else "seeded sample spread over the file"
        return f"calibration: {self.used:,} of {self.total:,} rows ({how})"


def select_rows(
    x: np.ndarray, size: int, seed: int, labels: np.ndarray | None = None
) -> CalibrationRows:
    """``min(N, size)`` rows of ``x [N, ...]`` drawn without replacement, uniformly over the
    whole file, in a seeded random order (``numpy.random.default_rng(seed)``).

    The first rows of a file are not a sample of it: a file concatenated per class would show
    the calibrator one class only (issue 23: int8 accuracy of the unseen class fell from 1.00
    to 0.95 with no warning). ``labels [N]`` (optional) are used only to detect ordering."""
    n = int(x.shape[0])
    rng = np.random.default_rng(seed)
    index = rng.permutation(n)[: min(n, size)].astype(np.int64)
    return CalibrationRows(index, n, looks_ordered(x, labels))


def looks_ordered(x: np.ndarray, labels: np.ndarray | None = None) -> str | None:
    """Why ``x [N, ...]`` looks sorted, or None: labels that never decrease (and take more than
    one value), or first and second halves whose feature means differ by more than
    ``max(0.3, 8 / sqrt(N))`` pooled standard deviations (root mean square over features; for
    exchangeable rows the statistic is about ``2 / sqrt(N)``)."""
    n = int(x.shape[0])
    if labels is not None and len(labels) == n and n > 1:
        y = np.asarray(labels).reshape(n, -1)[:, 0]
        if np.unique(y).size > 1 and bool(np.all(np.diff(y) >= 0)):
            return "its labels are sorted"
    if n < 16 or not np.issubdtype(x.dtype, np.floating):
        return None
    flat = x.reshape(n, -1).astype(np.float64)
    a, b = flat[: n // 2], flat[n // 2 :]
    sd = flat.std(axis=0)
    keep = sd > 0
    if not keep.any():
        return None
    d = np.sqrt(np.mean(((a.mean(0) - b.mean(0))[keep] / sd[keep]) ** 2))
    limit = max(0.3, 8 / np.sqrt(n))
    if d > limit:
        return (
            f"its first and second halves differ (mean gap {d:.2f} standard deviations, "
            f"limit {limit:.2f})"
        )
    return None


def calibration_file(calib: np.ndarray | str | Path, info) -> dict[str, np.ndarray]:
    """The calibration file's ``x [N, *F]`` (and labels ``y [N]`` when the ``.npz`` has them),
    validated against the model's input (``info``: :func:`qbnn.runtimes.session.model_info`);
    ``x`` in the model's input dtype. Raises :class:`ConfigError` naming the problem."""
    data = load_npz(calib, require=("x",)) if not isinstance(calib, np.ndarray) else {"x": calib}
    x = data["x"]
    if len(x) == 0:
        raise ConfigError("the calibration set is empty")
    if not info.accepts(x.shape):
        raise ConfigError(
            f"calibration data shape {list(x.shape)} does not match the model input "
            f"[N, {', '.join(map(str, info.feature_shape))}]"
        )
    want = np.dtype(info.input_dtype)
    if np.issubdtype(want, np.integer):  # token ids: integers in, the model's dtype
        if not np.issubdtype(x.dtype, np.integer):
            raise ConfigError(
                f"the model takes integer ids ({want.name}); the calibration data is {x.dtype}: "
                "save the token ids themselves"
            )
    elif not np.isfinite(x).all():
        raise ConfigError("calibration data contains NaN or inf values")
    else:
        want = np.dtype(np.float32)
    out = {"x": np.ascontiguousarray(x, dtype=want)}
    y = data.get("y")
    if y is not None and len(y) == len(x):
        out["y"] = np.asarray(y)
    return out


def calibration_inputs(
    data: dict[str, np.ndarray], cal: CalibrationConfig, quiet: bool = False
) -> tuple[np.ndarray, CalibrationRows]:
    """The calibration rows the stage uses: ``cal.size`` rows sampled over the whole file
    (:func:`~.calibration.select_rows`); warns when the file looks ordered (its labels ``y``,
    when the ``.npz`` has them, or its halves)."""
    x = data["x"]
    rows = select_rows(x, cal.size, cal.seed, data.get("y"))
    if not quiet:
        log.info(rows.describe())
    if rows.ordered and not quiet:
        log.warning(
            "the calibration file looks ordered (%s); qbnn calibrates on a seeded sample spread "
            "over all %d rows, but check that the file is the data you meant",
            rows.ordered,
            rows.total,
        )
    return np.ascontiguousarray(x[rows.index]), rows
