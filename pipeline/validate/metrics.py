"""Evaluation metrics for (Bayesian) classifiers and regressors, numpy only.

Conventions
-----------
* ``probs`` is ``[N, C] float``: one row of class probabilities per sample. Values must be
  finite and lie in ``[0, 1]`` (a tolerance of ``1e-6`` is allowed); rows are *not* required
  to sum to exactly one.
* ``labels`` is ``[N] int`` with values in ``[0, C)``. Float arrays holding integral values
  are accepted.
* The predicted class is ``argmax(probs, axis=1)`` (first index on ties) and the
  *confidence* is ``max(probs, axis=1)``.
* ``uncertainty`` is ``[N] float`` (higher = less certain) and ``correct`` is ``[N] bool``
  (``0``/``1`` integers are accepted).
* Every function raises ``ValueError`` for empty input, mismatched lengths or shapes and
  out-of-range values.

Ties in uncertainty
-------------------
Selective-prediction metrics (:func:`risk_coverage`, :func:`aurc`, :func:`referral_curve`,
:func:`referral_needed`) never split a group of equal uncertainty values by input order:
curves are evaluated only where the sorted uncertainty strictly changes (plus at ``N``),
and :func:`referral_curve` uses the expected accuracy under uniformly random tie-breaking
when a requested fraction cuts through a tie group. Results are therefore invariant to
permutations of the input.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import NormalDist

import numpy as np

__all__ = [
    "accuracy",
    "nll",
    "brier",
    "ece",
    "ece_equal_mass",
    "mce",
    "reliability_curve",
    "risk_coverage",
    "aurc",
    "referral_curve",
    "referral_needed",
    "auroc",
    "aupr",
    "roc_curve",
    "entropy",
    "uncertainty_split",
    "rmse",
    "gaussian_nll",
    "picp",
    "bootstrap_ci",
]

_PROB_TOL = 1e-6


# --------------------------------------------------------------------------- validation


def _as_probs(probs: object) -> np.ndarray:
    """Validate ``probs: [N, C] float`` (N, C >= 1, finite, in [0, 1]); return float64."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D [N, C]; got ndim={p.ndim} with shape {p.shape}")
    if p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must be non-empty; got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs must be finite; got NaN or inf")
    if p.min() < -_PROB_TOL or p.max() > 1.0 + _PROB_TOL:
        raise ValueError(f"probs must lie in [0, 1]; got range [{p.min()}, {p.max()}]")
    return p


def _as_labels(labels: object, n: int, n_classes: int) -> np.ndarray:
    """Validate ``labels: [n] int`` with values in ``[0, n_classes)``; return int64."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match probs; got {y.shape}")
    integral_float = np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0)
    if not (np.issubdtype(y.dtype, np.integer) or integral_float):
        raise ValueError(f"labels must be integers; got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}); got range [{y.min()}, {y.max()}]")
    return y


def _probs_labels(probs: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate a ``(probs [N, C], labels [N])`` pair."""
    p = _as_probs(probs)
    return p, _as_labels(labels, p.shape[0], p.shape[1])


def _as_1d(x: object, name: str, n: int | None = None) -> np.ndarray:
    """Validate a non-empty, NaN-free ``[n] float`` vector."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} must be non-empty; got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} must have length {n}; got {a.shape[0]}")
    if np.any(np.isnan(a)):
        raise ValueError(f"{name} must not contain NaN")
    return a


def _as_correct(correct: object, n: int) -> np.ndarray:
    """Validate ``correct: [n] bool`` (or 0/1 integers); return bool."""
    c = np.asarray(correct)
    if c.ndim != 1 or c.shape[0] != n:
        raise ValueError(f"correct must have shape ({n},) to match uncertainty; got {c.shape}")
    if c.dtype != np.bool_ and not np.all(np.isin(c, (0, 1))):
        raise ValueError(f"correct must be boolean or 0/1; got values {np.unique(c)[:5]}")
    return c.astype(bool)


def _unc_correct(uncertainty: object, correct: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate an ``(uncertainty [N], correct [N])`` pair."""
    u = _as_1d(uncertainty, "uncertainty")
    return u, _as_correct(correct, u.shape[0])


def _check_n_bins(n_bins: int) -> int:
    """``n_bins`` must be an integer >= 1."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1; got {n_bins!r}")
    return int(n_bins)


# --------------------------------------------------------------------------- classification


def accuracy(probs: object, labels: object) -> float:
    """Top-1 accuracy.

    Args:
        probs: ``[N, C] float`` class probabilities.
        labels: ``[N] int`` true classes in ``[0, C)``.

    Returns:
        Fraction of samples whose ``argmax`` (first index on ties) equals the label.
    """
    p, y = _probs_labels(probs, labels)
    return float(np.mean(np.argmax(p, axis=1) == y))


def nll(probs: object, labels: object, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class, in nats.

    Args:
        probs: ``[N, C] float`` class probabilities.
        labels: ``[N] int`` true classes in ``[0, C)``.
        eps: probabilities of the true class are clipped to ``[eps, 1]`` before the log.

    Returns:
        ``mean_i -log(max(probs[i, labels[i]], eps))``.
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0; got {eps!r}")
    p, y = _probs_labels(probs, labels)
    p_true = np.clip(p[np.arange(p.shape[0]), y], eps, 1.0)
    return float(-np.mean(np.log(p_true)))


def brier(probs: object, labels: object) -> float:
    """Multi-class Brier score (range ``[0, 2]``).

    Args:
        probs: ``[N, C] float`` class probabilities.
        labels: ``[N] int`` true classes in ``[0, C)``.

    Returns:
        ``mean_i sum_c (probs[i, c] - onehot(labels)[i, c])**2``.
    """
    p, y = _probs_labels(probs, labels)
    onehot = np.zeros_like(p)
    onehot[np.arange(p.shape[0]), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def _conf_correct(probs: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence ``[N] float`` and correctness ``[N] bool``."""
    p, y = _probs_labels(probs, labels)
    return p.max(axis=1), np.argmax(p, axis=1) == y


def _equal_width_bins(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple:
    """Per-bin ``(edges [B+1], count [B] int, conf_sum [B], correct_sum [B])``.

    Bins are ``(lo, hi]`` over ``[0, 1]``; the first bin also contains 0.
    """
    n_bins = _check_n_bins(n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Number of interior edges strictly below conf -> index of the (lo, hi] bin.
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    correct_sum = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    return edges, count, conf_sum, correct_sum


def ece(probs: object, labels: object, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width confidence bins.

    Args:
        probs: ``[N, C] float`` class probabilities.
        labels: ``[N] int`` true classes in ``[0, C)``.
        n_bins: number of equal-width bins over ``[0, 1]``; bins are ``(lo, hi]`` and the
            first bin also contains confidence 0.

    Returns:
        ``sum_b (n_b / N) * |acc_b - conf_b|`` over non-empty bins.
    """
    conf, correct = _conf_correct(probs, labels)
    _, _, conf_sum, correct_sum = _equal_width_bins(conf, correct, n_bins)
    return float(np.sum(np.abs(correct_sum - conf_sum)) / conf.shape[0])


def ece_equal_mass(probs: object, labels: object, n_bins: int = 15) -> float:
    """Expected calibration error with adaptive (equal-count) bins that never split ties.

    Samples are sorted by confidence; the bin ends of ``np.array_split`` into ``n_bins``
    contiguous groups (sizes differing by at most one) are taken, and an end that falls inside a
    group of tied confidences moves forward to the end of that group, so every tie group lies in
    one bin (bins may then be larger than ``N / n_bins``, or fewer than ``n_bins``; empty groups,
    when ``n_bins > N``, are skipped). Splitting a tie group would make the result depend on how
    the tied rows are ordered: an int8 or hard-vote model with a few discrete confidences got an
    inflated ECE when its wrong predictions were sorted first.

    Args:
        probs: ``[N, C] float`` class probabilities.
        labels: ``[N] int`` true classes in ``[0, C)``.
        n_bins: number of bins.

    Returns:
        ``sum_b (n_b / N) * |acc_b - conf_b|``.
    """
    n_bins = _check_n_bins(n_bins)
    conf, correct = _conf_correct(probs, labels)
    order = np.argsort(conf, kind="stable")
    cs, ks = conf[order], correct[order].astype(np.float64)
    n = cs.shape[0]
    # first index of the next tie group at or after each position: ends move past ties
    group_end = np.searchsorted(cs, cs, side="right")
    cuts = [0]
    for chunk in np.array_split(np.arange(n), n_bins):
        if chunk.size:
            end = int(group_end[chunk[-1]])
            if end > cuts[-1]:
                cuts.append(end)
    bins = zip(cuts[:-1], cuts[1:], strict=True)
    total = sum(abs(float(ks[a:b].sum()) - float(cs[a:b].sum())) for a, b in bins)
    return total / n


def mce(probs: object, labels: object, n_bins: int = 15) -> float:
    """Maximum calibration error over non-empty equal-width bins (same bins as :func:`ece`).

    Args:
        probs: ``[N, C] float`` class probabilities.
        labels: ``[N] int`` true classes in ``[0, C)``.
        n_bins: number of equal-width bins over ``[0, 1]``.

    Returns:
        ``max_b |acc_b - conf_b|`` over bins with ``n_b > 0``.
    """
    conf, correct = _conf_correct(probs, labels)
    _, count, conf_sum, correct_sum = _equal_width_bins(conf, correct, n_bins)
    nz = count > 0
    return float(np.max(np.abs(correct_sum[nz] - conf_sum[nz]) / count[nz]))


def reliability_curve(probs: object, labels: object, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin statistics for a reliability diagram (same bins as :func:`ece`).

    Args:
        probs: ``[N, C] float`` class probabilities.
        labels: ``[N] int`` true classes in ``[0, C)``.
        n_bins: number of equal-width bins ``B`` over ``[0, 1]``.

    Returns:
        dict of ``[B]`` arrays: ``bin_lower``/``bin_upper`` (float edges), ``confidence``
        and ``accuracy`` (float means; NaN for empty bins) and ``count`` (int64).
    """
    conf, correct = _conf_correct(probs, labels)
    edges, count, conf_sum, correct_sum = _equal_width_bins(conf, correct, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        mean_acc = np.where(count > 0, correct_sum / count, np.nan)
    return {
        "bin_lower": edges[:-1],
        "bin_upper": edges[1:],
        "confidence": mean_conf,
        "accuracy": mean_acc,
        "count": count.astype(np.int64),
    }


# --------------------------------------------------------------------------- selective prediction


def _sorted_groups(uncertainty: object, correct: object) -> tuple[np.ndarray, np.ndarray, int]:
    """Sort by increasing uncertainty and locate tie groups.

    Returns:
        ``ends``: ``[G] int`` exclusive end index of each tie group in sorted order
        (the last entry is ``N``); ``cum_correct``: ``[N + 1] float`` with
        ``cum_correct[k]`` = number of correct samples among the ``k`` most certain
        (well defined at every group end); ``N``.
    """
    u, c = _unc_correct(uncertainty, correct)
    order = np.argsort(u, kind="stable")
    u_sorted, c_sorted = u[order], c[order]
    ends = np.append(np.flatnonzero(u_sorted[1:] != u_sorted[:-1]) + 1, u.shape[0])
    cum_correct = np.concatenate(([0.0], np.cumsum(c_sorted, dtype=np.float64)))
    return ends, cum_correct, u.shape[0]


def risk_coverage(uncertainty: object, correct: object) -> dict[str, np.ndarray]:
    """Risk-coverage curve of selective prediction.

    Samples are retained in order of increasing uncertainty. The curve is evaluated only
    at the end of each group of tied uncertainty values (a tie group is kept or rejected
    as a whole), so it is invariant to input order. Without ties this is coverage
    ``k / N`` for ``k = 1..N``.

    Args:
        uncertainty: ``[N] float``, higher means less certain.
        correct: ``[N] bool`` whether each prediction is correct.

    Returns:
        dict of ``[G] float`` arrays (``G`` = number of distinct uncertainty values):
        ``coverage`` (``k / N``, increasing, last = 1) and ``risk`` (error rate among the
        ``k`` retained samples).
    """
    ends, cum_correct, n = _sorted_groups(uncertainty, correct)
    return {"coverage": ends / n, "risk": 1.0 - cum_correct[ends] / ends}


def aurc(uncertainty: object, correct: object) -> float:
    """Area under the risk-coverage curve (lower is better).

    Definition: the risk-coverage curve is treated as a step function over the points
    of :func:`risk_coverage` (one per tie group ``g``, with coverage ``cov_g`` and risk
    ``risk_g`` at the end of the group): on ``(cov_{g-1}, cov_g]`` the risk is
    ``risk_g``, with ``cov_0 = 0``. Each tie group is thus weighted by its share of the
    samples. Without ties this is the mean over ``k = 1..N`` of the selective risk of the
    ``k`` most certain samples (Geifman et al.). If all uncertainties are tied it
    is the overall error rate.

    Args:
        uncertainty: ``[N] float``, higher means less certain.
        correct: ``[N] bool`` whether each prediction is correct.

    Returns:
        ``sum_g (cov_g - cov_{g-1}) * risk_g`` for ``g = 1..G`` with ``cov_0 = 0``.
    """
    rc = risk_coverage(uncertainty, correct)
    return float(np.sum(np.diff(rc["coverage"], prepend=0.0) * rc["risk"]))


def _retained_accuracy(ends: np.ndarray, cum_correct: np.ndarray, n_keep: np.ndarray) -> np.ndarray:
    """Expected accuracy of the ``n_keep`` most certain samples, ``[F] float``.

    Tie groups entirely inside the kept set count fully; the group straddling the cut
    contributes its mean correctness per kept slot (uniformly random tie-breaking).
    """
    g = np.searchsorted(ends, n_keep, side="left")
    starts = np.concatenate(([0], ends[:-1]))
    group_acc = (cum_correct[ends] - cum_correct[starts]) / (ends - starts)
    kept_correct = cum_correct[starts[g]] + (n_keep - starts[g]) * group_acc[g]
    return kept_correct / n_keep


def referral_curve(
    uncertainty: object, correct: object, fractions: object = None
) -> dict[str, np.ndarray]:
    """Accuracy on retained samples after referring the most uncertain ones to an expert.

    For a referral fraction ``r`` the ``floor(r * N)`` most uncertain samples are referred
    (a ``1e-9`` tolerance absorbs float noise) and at least one sample is always
    retained. If the cut falls inside a group of tied uncertainties, the expected
    accuracy under uniformly random tie-breaking is reported (input-order independent).

    Args:
        uncertainty: ``[N] float``, higher means less certain.
        correct: ``[N] bool`` whether each prediction is correct.
        fractions: ``[F] float`` referral fractions in ``[0, 1)``; default
            ``np.linspace(0, 0.95, 20)`` (0, 0.05, ..., 0.95).

    Returns:
        dict with ``referral`` (``[F] float``, the requested fractions) and ``accuracy``
        (``[F] float``, accuracy on the retained samples).
    """
    fr = np.linspace(0.0, 0.95, 20) if fractions is None else _as_1d(fractions, "fractions")
    if fr.min() < 0.0 or fr.max() >= 1.0:
        raise ValueError(f"fractions must lie in [0, 1); got range [{fr.min()}, {fr.max()}]")
    ends, cum_correct, n = _sorted_groups(uncertainty, correct)
    n_refer = np.minimum(np.floor(fr * n + 1e-9).astype(np.int64), n - 1)
    acc = _retained_accuracy(ends, cum_correct, n - n_refer)
    return {"referral": fr, "accuracy": acc}


def referral_needed(uncertainty: object, correct: object, target: float) -> float | None:
    """Smallest referral fraction whose retained accuracy reaches ``target``.

    Candidate cuts respect tie groups: retaining the ``k`` most certain samples is allowed
    only when ``k`` is the end of a tie group (see :func:`risk_coverage`), so every
    candidate is well defined without tie-breaking. Referring *everything* is not a
    candidate: at least one sample must be retained.

    Args:
        uncertainty: ``[N] float``, higher means less certain.
        correct: ``[N] bool`` whether each prediction is correct.
        target: required accuracy in ``[0, 1]``.

    Returns:
        ``(N - k) / N`` for the largest allowed ``k`` with ``accuracy_k >= target``, or
        ``None`` if no allowed cut reaches the target.
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target must lie in [0, 1]; got {target!r}")
    ends, cum_correct, n = _sorted_groups(uncertainty, correct)
    ok = ends[cum_correct[ends] / ends >= target]
    if ok.size == 0:
        return None
    return float((n - ok.max()) / n)


# --------------------------------------------------------------------------- OOD detection


def _pos_neg(scores_pos: object, scores_neg: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``scores_pos: [n1] float`` and ``scores_neg: [n0] float`` (both non-empty)."""
    return _as_1d(scores_pos, "scores_pos"), _as_1d(scores_neg, "scores_neg")


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x: [n] float``; tied values share their average rank."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1])))
    ends = np.append(starts[1:], x.shape[0])
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty_like(x)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(scores_pos: object, scores_neg: object) -> float:
    """Area under the ROC curve; positives are OOD, higher score means more OOD.

    Computed with the Mann-Whitney U statistic on average ranks, i.e. the probability that
    a random positive scores higher than a random negative, ties counting 0.5.

    Args:
        scores_pos: ``[n1] float`` scores of positive (OOD) samples.
        scores_neg: ``[n0] float`` scores of negative (in-distribution) samples.

    Returns:
        AUROC in ``[0, 1]``.
    """
    pos, neg = _pos_neg(scores_pos, scores_neg)
    n1, n0 = pos.shape[0], neg.shape[0]
    ranks = _average_ranks(np.concatenate((pos, neg)))
    u_stat = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    return float(u_stat / (n1 * n0))


def _threshold_counts(scores_pos: object, scores_neg: object) -> tuple:
    """Cumulative ``(tps [T], fps [T], n1, n0)`` at each distinct score, high to low."""
    pos, neg = _pos_neg(scores_pos, scores_neg)
    scores = np.concatenate((pos, neg))
    is_pos = np.concatenate((np.ones(pos.shape[0]), np.zeros(neg.shape[0])))
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], is_pos[order]
    last = np.append(np.flatnonzero(s[1:] != s[:-1]), s.shape[0] - 1)
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    return tps, fps, pos.shape[0], neg.shape[0]


def roc_curve(scores_pos: object, scores_neg: object) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve with positives = OOD and higher score = more OOD.

    One point per distinct score (thresholds from high to low), preceded by ``(0, 0)``;
    no collinear points are dropped (as sklearn's ``roc_curve(drop_intermediate=False)``).

    Args:
        scores_pos: ``[n1] float`` scores of positive (OOD) samples.
        scores_neg: ``[n0] float`` scores of negative (in-distribution) samples.

    Returns:
        ``(fpr, tpr)``, both ``[T + 1] float`` and non-decreasing, ending at ``(1, 1)``.
    """
    tps, fps, n1, n0 = _threshold_counts(scores_pos, scores_neg)
    fpr = np.concatenate(([0.0], fps / n0))
    tpr = np.concatenate(([0.0], tps / n1))
    return fpr, tpr


def aupr(scores_pos: object, scores_neg: object) -> float:
    """Average precision with positives = OOD (sklearn ``average_precision_score``).

    ``AP = sum_t (R_t - R_{t-1}) * P_t`` over distinct score thresholds ``t`` from high to
    low, with ``R_0 = 0``; tied scores enter together (no interpolation).

    Args:
        scores_pos: ``[n1] float`` scores of positive (OOD) samples.
        scores_neg: ``[n0] float`` scores of negative (in-distribution) samples.

    Returns:
        Average precision in ``[0, 1]``.
    """
    tps, fps, n1, _ = _threshold_counts(scores_pos, scores_neg)
    precision = tps / (tps + fps)
    recall = np.concatenate(([0.0], tps / n1))
    return float(np.sum(np.diff(recall) * precision))


# --------------------------------------------------------------------------- uncertainty


def entropy(probs: object) -> np.ndarray:
    """Shannon entropy in nats over the last axis, with ``0 * log 0 = 0``.

    Args:
        probs: ``[..., C] float`` probabilities (finite, non-negative, non-empty).

    Returns:
        ``[...] float64`` entropies (a 0-d value for ``[C]`` input).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 0 or p.size == 0:
        raise ValueError(f"probs must be a non-empty array [..., C]; got shape {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < -_PROB_TOL:
        raise ValueError("probs must be finite and non-negative")
    p = np.clip(p, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -np.sum(terms, axis=-1)


def uncertainty_split(uncertainty: object, correct: object) -> dict[str, float]:
    """Mean uncertainty of correct vs. wrong predictions.

    Args:
        uncertainty: ``[N] float``.
        correct: ``[N] bool``.

    Returns:
        dict with ``correct_mean`` and ``wrong_mean`` (float; NaN if the group is empty).
    """
    u, c = _unc_correct(uncertainty, correct)
    return {
        "correct_mean": float(np.mean(u[c])) if c.any() else float("nan"),
        "wrong_mean": float(np.mean(u[~c])) if (~c).any() else float("nan"),
    }


# --------------------------------------------------------------------------- regression


def _same_shape(**arrays: object) -> list[np.ndarray]:
    """Convert to float64 and require identical, non-empty, finite arrays."""
    out = [np.asarray(a, dtype=np.float64) for a in arrays.values()]
    shapes = {name: a.shape for name, a in zip(arrays, out, strict=True)}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"arrays must have the same shape; got {shapes}")
    if out[0].size == 0:
        raise ValueError(f"arrays must be non-empty; got {shapes}")
    for name, a in zip(arrays, out, strict=True):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be finite; got NaN or inf")
    return out


def _variance(pred_variance: np.ndarray) -> np.ndarray:
    """Reject negative variances."""
    if pred_variance.min() < 0:
        raise ValueError(f"pred_variance must be >= 0; got min {pred_variance.min()}")
    return pred_variance


def rmse(pred_mean: object, target: object) -> float:
    """Root mean squared error over all elements.

    Args:
        pred_mean: ``[N] or [N, D] float`` predictions.
        target: same shape as ``pred_mean``.

    Returns:
        ``sqrt(mean((pred_mean - target) ** 2))``.
    """
    mu, y = _same_shape(pred_mean=pred_mean, target=target)
    return float(np.sqrt(np.mean((mu - y) ** 2)))


def gaussian_nll(
    pred_mean: object, pred_variance: object, target: object, min_variance: float = 1e-12
) -> float:
    """Mean Gaussian negative log-likelihood over all elements, in nats.

    Args:
        pred_mean: ``[N] or [N, D] float`` predictive means.
        pred_variance: same shape, predictive variances (>= 0; clipped below at
            ``min_variance``).
        target: same shape, observed values.
        min_variance: lower bound applied to the variance (> 0).

    Returns:
        ``mean(0.5 * (log(2 * pi * var) + (target - mean) ** 2 / var))``.
    """
    if not min_variance > 0:
        raise ValueError(f"min_variance must be > 0; got {min_variance!r}")
    mu, var, y = _same_shape(pred_mean=pred_mean, pred_variance=pred_variance, target=target)
    var = np.maximum(_variance(var), min_variance)
    return float(np.mean(0.5 * (np.log(2.0 * np.pi * var) + (y - mu) ** 2 / var)))


def picp(pred_mean: object, pred_variance: object, target: object, level: float = 0.95) -> float:
    """Prediction-interval coverage probability of central Gaussian intervals.

    The interval is ``mean +- z * sqrt(var)`` with ``z = Phi^{-1}(0.5 + level / 2)``
    (exact normal quantile from :class:`statistics.NormalDist`; 1.95996 for 0.95,
    0.99446 for 0.68). Endpoints count as inside.

    Args:
        pred_mean: ``[N] or [N, D] float`` predictive means.
        pred_variance: same shape, predictive variances (>= 0).
        target: same shape, observed values.
        level: nominal coverage in ``(0, 1)``.

    Returns:
        Fraction of elements of ``target`` inside their interval.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level!r}")
    mu, var, y = _same_shape(pred_mean=pred_mean, pred_variance=pred_variance, target=target)
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    return float(np.mean(np.abs(y - mu) <= z * np.sqrt(_variance(var))))


# --------------------------------------------------------------------------- bootstrap


def _rows(arrays: tuple) -> list[np.ndarray]:
    """Require one or more arrays sharing a non-zero leading length ``N``."""
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array; got none")
    arrs = [np.asarray(a) for a in arrays]
    lengths = [a.shape[0] if a.ndim else None for a in arrs]
    if None in lengths or len(set(lengths)) != 1 or lengths[0] == 0:
        raise ValueError(f"arrays must be non-empty with equal leading length; got {lengths}")
    return arrs


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: object,
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``metric_fn(*arrays)``.

    Each replicate draws ``N`` row indices with replacement from
    ``np.random.default_rng(seed)`` and applies the same indices to every array (rows are
    resampled jointly). Exceptions raised by ``metric_fn`` propagate; a NaN replicate
    makes the interval NaN.

    Args:
        metric_fn: callable taking the resampled arrays positionally, returning a float.
        *arrays: one or more arrays sharing the leading dimension ``N >= 1``
            (e.g. ``probs [N, C]`` and ``labels [N]``).
        n_boot: number of bootstrap replicates (>= 1).
        alpha: two-sided level in ``(0, 1)``; the interval is the ``alpha / 2`` and
            ``1 - alpha / 2`` quantiles (numpy's default linear interpolation).
        seed: seed of the random generator.

    Returns:
        ``(low, high)`` floats.
    """
    arrs = _rows(arrays)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1; got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha!r}")
    rng = np.random.default_rng(seed)
    n = arrs[0].shape[0]
    stats = np.empty(int(n_boot))
    for b in range(int(n_boot)):
        idx = rng.integers(0, n, size=n)
        stats[b] = metric_fn(*(a[idx] for a in arrs))
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)
