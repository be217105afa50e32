"""Metrics of multi-label classifiers: K independent Bernoulli labels per input.

A multi-label model (``qbnn.multilabel`` true) predicts ``mean_probs [N, K]``: K per-label
probabilities whose rows need not sum to 1; its labels are ``y [N, K]`` in {0, 1}. Each label is
a binary prediction ``p > 0.5`` with confidence ``max(p, 1 - p)``, scored by the binary metrics
of :mod:`.metrics` on the two classes ``[1 - p, p]`` and then **averaged over the K labels**:

* ``accuracy``: per-label (Hamming) accuracy, the fraction of the N*K label decisions that are
  right (stable as K grows, which subset accuracy is not); ``subset_accuracy`` (every label of
  the row right) is reported beside it.
* ``nll``: mean Bernoulli NLL ``-[y log p + (1 - y) log(1 - p)]`` over the N*K labels (nats).
* ``brier``: mean ``(p - y)**2`` over the N*K labels (range [0, 1]; half the two-class Brier
  score of a binary head).
* ``ece``, ``ece_equal_mass``, ``mce``: each label's two-class calibration error (top-label
  confidence ``max(p, 1 - p)``, as a binary head's), averaged over the labels.
* Selective prediction (referral, AURC) ranks **inputs** by the summed predictive entropy and
  measures the per-label accuracy of the inputs kept: each input counts as its K label slots,
  which share its uncertainty and are therefore kept or referred together.
* OOD detection uses the summed predictive entropy and mutual information, like any classifier.
"""

from __future__ import annotations

import numpy as np

from qbnn.runtimes.errors import RuntimeInputError

from . import metrics as M

__all__ = [
    "check_labels",
    "label_metrics",
    "label_reliability",
    "label_slots",
    "row_correct",
]


def check_labels(y: np.ndarray, n: int, k: int, source: str) -> np.ndarray:
    """Validate multi-label targets ``y [n, k]`` in {0, 1} (integers, booleans or integral
    floats); returns them as int64. Raises :class:`RuntimeInputError` naming the bad value."""
    y = np.asarray(y)
    if y.ndim != 2 or y.shape != (n, k):
        raise RuntimeInputError(
            f"{source}: the models are multi-label (K = {k} independent labels), so 'y' must be "
            f"a 0/1 matrix of shape [{n}, {k}]; got shape {list(y.shape)}"
        )
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise RuntimeInputError(f"{source}: multi-label 'y' must be 0/1, got dtype {y.dtype}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise RuntimeInputError(
            f"{source}: multi-label 'y' holds {y[i, j].item()!r} at row {i}, label {j}; "
            "each entry must be 0 or 1"
        )
    return y.astype(np.int64)


def _two_class(p: np.ndarray) -> np.ndarray:
    """``p [N]`` as two-class rows ``[N, 2]`` = ``[1 - p, p]``."""
    return np.stack([1.0 - p, p], axis=1)


def _per_label(fn, p: np.ndarray, y: np.ndarray, *args) -> float:
    """``fn`` of each label's two-class predictions, averaged over the K labels."""
    return float(np.mean([fn(_two_class(p[:, j]), y[:, j], *args) for j in range(p.shape[1])]))


def label_metrics(p: np.ndarray, y: np.ndarray, n_bins: int, full: bool = False) -> dict:
    """``accuracy`` (Hamming), ``nll``, ``brier``, ``ece`` of ``p [N, K]`` against
    ``y [N, K]`` (see the module docstring); ``full`` adds ``subset_accuracy``,
    ``ece_equal_mass`` and ``mce``."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    hits = (p > 0.5) == (y == 1)
    res = {
        "accuracy": float(hits.mean()),
        "nll": _per_label(M.nll, p, y),
        "brier": float(np.mean((p - y) ** 2)),
        "ece": _per_label(M.ece, p, y, n_bins),
    }
    if full:
        res["subset_accuracy"] = float(hits.all(axis=1).mean())
        res["ece_equal_mass"] = _per_label(M.ece_equal_mass, p, y, n_bins)
        res["mce"] = _per_label(M.mce, p, y, n_bins)
    return res


def row_correct(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``[N] bool``: every label of the row decided right (``p > 0.5`` iff ``y = 1``)."""
    return ((np.asarray(p) > 0.5) == (y == 1)).all(axis=1)


def label_slots(p: np.ndarray, y: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Selective-prediction inputs over label slots: ``u [N]`` repeated per label
    ``[N * K]`` and per-label correctness ``[N * K] bool``. Slots of one input tie in
    uncertainty, so :mod:`.metrics`' tie-aware curves keep or refer them together."""
    k = np.asarray(p).shape[1]
    hits = (np.asarray(p) > 0.5) == (y == 1)
    return np.repeat(np.asarray(u, dtype=np.float64), k), hits.reshape(-1)


def label_reliability(p: np.ndarray, y: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """:func:`metrics.reliability_curve` of all N*K label decisions pooled (two-class form)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    return M.reliability_curve(_two_class(p.reshape(-1)), y.reshape(-1), n_bins)
