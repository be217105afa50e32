"""Predictive guard: fp32 vs int8 ``mean_probs`` on rows of the calibration file, per class.

The spread check (:mod:`.guard`) asks whether int8 kept the posterior's *width*; it cannot see
int8 moving the predictive itself. Issue 23: a class the calibrator never saw lost accuracy
(1.00 -> 0.95) and its ``mean_probs`` moved by up to 0.97 while the spread ratio was 0.9998.
This check runs both graphs with the same seeds on up to ``rows`` rows of the whole file
(stratified by label when the file has labels ``y``, so a rare class is always compared) and
measures, per class, the mean over rows of the total-variation distance
``0.5 * sum_c |p_fp32 - p_int8|`` between the two ``mean_probs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from qbnn.runtimes.contract import INPUT, NUM_SAMPLES
from qbnn.runtimes.seeding import reseed

from .config import GuardConfig

__all__ = [
    "ClassGap",
    "PredictiveCheck",
    "guard_predictive",
    "guard_rows",
    "predictive_check",
    "predictive_message",
]

_CHUNK = 64  # rows per session.run


@dataclass(frozen=True)
class ClassGap:
    """fp32 vs int8 predictive on one group of rows (a class, or all rows without labels).

    ``mean_tv``: mean over the rows of the total-variation distance between the two
    ``mean_probs``; ``max_gap``: the largest ``|p_fp32 - p_int8|`` of any row and class;
    ``acc_fp32`` / ``acc_int8``: accuracy on the rows (None without labels)."""

    group: str
    rows: int
    mean_tv: float
    max_gap: float
    acc_fp32: float | None = None
    acc_int8: float | None = None

    def describe(self) -> str:
        acc = ""
        if self.acc_fp32 is not None:
            acc = f", accuracy {self.acc_fp32:.2f} -> {self.acc_int8:.2f}"
        return (
            f"{self.group} ({self.rows} rows): mean_probs moved by {self.mean_tv:.3f} on average "
            f"(largest gap {self.max_gap:.2f}{acc})"
        )


@dataclass(frozen=True)
class PredictiveCheck:
    """One :class:`ClassGap` per group, worst (largest ``mean_tv``) first."""

    groups: tuple[ClassGap, ...]

    @property
    def worst(self) -> ClassGap:
        return self.groups[0]

    def failing(self, max_mean_gap: float) -> list[ClassGap]:
        """The groups whose ``mean_tv`` exceeds ``max_mean_gap``."""
        return [g for g in self.groups if g.mean_tv > max_mean_gap]


def guard_rows(n: int, rows: int, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
    """Indices (int64) of up to ``rows`` rows of an ``N``-row file: all rows when ``N <= rows``;
    else, with ``labels [N]``, up to ``ceil(rows / classes)`` rows of every class (seeded),
    without labels a seeded uniform sample. Sorted, so the result does not depend on order."""
    rng = np.random.default_rng(seed)
    if n <= rows:
        return np.arange(n, dtype=np.int64)
    if labels is None:
        return np.sort(rng.permutation(n)[:rows]).astype(np.int64)
    y = np.asarray(labels).reshape(n, -1)[:, 0]
    classes = np.unique(y)
    per = -(-rows // len(classes))
    picks = [rng.permutation(np.flatnonzero(y == c))[:per] for c in classes]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def _mean_probs(model: onnx.ModelProto, x: np.ndarray, num_samples: int, seed: int):
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    reseed(m, seed)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    s = np.array(num_samples, dtype=np.int64)
    outs = [
        sess.run(["mean_probs"], {INPUT: x[i : i + _CHUNK], NUM_SAMPLES: s})[0]
        for i in range(0, len(x), _CHUNK)
    ]
    return np.concatenate(outs).astype(np.float64)


def predictive_check(
    fp32: onnx.ModelProto,
    int8: onnx.ModelProto,
    x: np.ndarray,
    labels: np.ndarray | None,
    num_samples: int,
    seed: int = 0,
) -> PredictiveCheck:
    """Compare ``mean_probs [N, C]`` of the two graphs on ``x [N, *F]`` (same seeds), per class
    of ``labels [N]`` (integer class ids) when given, else over all rows."""
    a = _mean_probs(fp32, x, num_samples, seed)
    b = _mean_probs(int8, x, num_samples, seed)
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    tv = 0.5 * np.abs(a - b).sum(1)
    gap = np.abs(a - b).max(1)
    if labels is None:
        return PredictiveCheck((ClassGap("all rows", len(x), float(tv.mean()), float(gap.max())),))
    y = np.asarray(labels).reshape(len(x), -1)[:, 0]
    groups = []
    for c in np.unique(y):
        sel = y == c
        groups.append(
            ClassGap(
                f"class {c}",
                int(sel.sum()),
                float(tv[sel].mean()),
                float(gap[sel].max()),
                float((a[sel].argmax(1) == c).mean()),
                float((b[sel].argmax(1) == c).mean()),
            )
        )
    return PredictiveCheck(tuple(sorted(groups, key=lambda g: -g.mean_tv)))


def guard_predictive(
    src_model: onnx.ModelProto,
    int8: onnx.ModelProto,
    info,
    guard: GuardConfig,
    num_samples: int,
    data: dict[str, np.ndarray],
) -> PredictiveCheck | None:
    """fp32 vs int8 ``mean_probs`` on up to ``guard.rows`` rows of the calibration file
    (``data["x"] [N, *F]``, labels ``data["y"] [N]`` optional), per class; None when the check is
    off or the graph has no ``mean_probs`` / ``num_samples`` (regression, plain graphs)."""
    outputs = {o.name for o in src_model.graph.output}
    if guard.max_mean_gap <= 0 or "mean_probs" not in outputs or not info.takes_num_samples:
        return None
    y = data.get("y")
    if y is not None and (y.ndim != 1 or not np.issubdtype(y.dtype, np.integer)):
        y = None  # one class id per row only (multi-label targets: compared over all rows)
    idx = guard_rows(len(data["x"]), guard.rows, guard.seed, y)
    s = max(16, num_samples)
    labels = None if y is None else y[idx]
    return predictive_check(src_model, int8, data["x"][idx], labels, s, guard.seed)


def predictive_message(failing: list[ClassGap], spread, max_mean_gap: float) -> str:
    """The refusal's first sentence for groups whose mean gap exceeds ``max_mean_gap``."""
    ratio = "" if spread is None else f" (the spread check passed: ratio {spread.ratio:.2f})"
    worst = "; ".join(g.describe() for g in failing[:4])
    return (
        f"int8 changes the predictive on the calibration file's rows{ratio}: {worst}; limit "
        f"guard.max_mean_gap = {max_mean_gap} (mean total-variation distance per class)"
    )
