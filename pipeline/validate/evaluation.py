"""Uncertainty metrics, curves, bootstrap intervals and MC noise of one model's predictions.

Everything here is numpy over the :class:`Outputs` of a model (no ONNX Runtime): ``validate``
runs the models and hands the outputs over. Conventions:

* Selective prediction (AURC, referral) ranks inputs by **predictive entropy**.
* OOD detection treats OOD inputs as positives and scores them by predictive entropy
  (``*_entropy``) and by mutual information (``*_mi``).
* Bootstrap replicates resample the in-distribution rows and the OOD rows independently, with
  the *same* indices for every model, so differences between models are paired.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import metrics as M
from . import multilabel as ML

__all__ = [
    "INTERVAL_KEYS",
    "Outputs",
    "bootstrap_indices",
    "core_metrics",
    "curves",
    "full_metrics",
    "percentile_interval",
    "referral_key",
    "regression_curves",
    "replicate",
    "spread",
]

#: Metrics that get a 95 % bootstrap interval (when available).
INTERVAL_KEYS = (
    "accuracy",
    "nll",
    "brier",
    "ece",
    "ood_auroc_entropy",
    "ood_auroc_mi",
    "rmse",
    "gaussian_nll",
)
PICP_LEVELS = (0.68, 0.95)
ROC_MAX_POINTS = 201
REFERRAL_FRACTIONS = np.round(np.arange(0, 96) / 100, 2)  # 0, 0.01, ..., 0.95
HIST_BINS = 30
#: regression views: nominal central-interval levels, PIT bins, rows in the scatter plot
COVERAGE_LEVELS = np.round(np.arange(1, 20) / 20, 2)  # 0.05, 0.10, ..., 0.95
PIT_BINS = 10
SCATTER_MAX_POINTS = 400
_ORDER = (
    "accuracy",
    "nll",
    "brier",
    "ece",
    "ece_equal_mass",
    "mce",
    "aurc",
    "referral_needed",
    "mean_entropy",
    "entropy_correct",
    "entropy_wrong",
    "mean_mi",
    "mi_correct",
    "mi_wrong",
    "ood_auroc_entropy",
    "ood_aupr_entropy",
    "ood_auroc_mi",
    "ood_aupr_mi",
    "mean_entropy_ood",
    "mean_mi_ood",
)


@dataclass(frozen=True)
class Outputs:
    """One model's predictions (float arrays; OOD fields ``None`` without OOD data).

    Classification: ``mean_probs [N, C]``, ``entropy [N]`` (predictive entropy), ``mi [N]``
    (mutual information), ``ood_entropy [M]``, ``ood_mi [M]``.
    Regression: ``pred_mean [N, D]``, ``pred_variance [N, D]``, ``epistemic_variance [N, D]``
    (variance of the per-sample means: the posterior's share).
    ``num_samples``: the MC sample count S actually used (1 for plain models).
    Dense classifiers (:mod:`~qbnn.pipeline.validate.dense`): one row per pixel, ``spatial``
    the per-input map shape and ``maps`` the first images' uncertainty maps.
    ``multilabel``: ``mean_probs [N, K]`` holds K independent label probabilities, ``entropy``
    and ``mi`` their sums over the labels, and labels are ``[N, K]`` in {0, 1}
    (:mod:`~qbnn.pipeline.validate.multilabel`).
    """

    num_samples: int
    mean_probs: np.ndarray | None = None
    entropy: np.ndarray | None = None
    mi: np.ndarray | None = None
    ood_entropy: np.ndarray | None = None
    ood_mi: np.ndarray | None = None
    pred_mean: np.ndarray | None = None
    pred_variance: np.ndarray | None = None
    epistemic_variance: np.ndarray | None = None
    spatial: tuple[int, ...] = ()
    maps: dict | None = None
    multilabel: bool = False

    @property
    def is_classifier(self) -> bool:
        return self.mean_probs is not None

    @property
    def has_ood(self) -> bool:
        return self.ood_entropy is not None

    def take(self, idx: np.ndarray | None, idx_ood: np.ndarray | None) -> Outputs:
        """Rows ``idx [N']`` of the in-distribution and ``idx_ood [M']`` of the OOD fields."""

        def sel(a, i):
            return a if a is None or i is None else a[i]

        return Outputs(
            self.num_samples,
            sel(self.mean_probs, idx),
            sel(self.entropy, idx),
            sel(self.mi, idx),
            sel(self.ood_entropy, idx_ood),
            sel(self.ood_mi, idx_ood),
            sel(self.pred_mean, idx),
            sel(self.pred_variance, idx),
            multilabel=self.multilabel,
        )


def referral_key(target: float) -> str:
    """Metric key of the referral needed to reach ``target`` accuracy (``referral_needed@0.99``)."""
    return f"referral_needed@{target:g}"


def _mean(a: np.ndarray) -> float:
    return float(np.mean(a, dtype=np.float64))


def core_metrics(
    out: Outputs, y: np.ndarray, *, n_bins: int, targets: Sequence[float]
) -> dict[str, float | None]:
    """The metrics that get bootstrap intervals, MC-noise estimates and gates.

    Args:
        out: the model's outputs.
        y: ``[N] int`` labels (classification) or ``[N, D] float`` targets (regression).
        n_bins: equal-width ECE bins.
        targets: accuracies for which the needed referral fraction is reported.

    Multi-label outputs use the definitions of :mod:`~qbnn.pipeline.validate.multilabel`
    (per-label accuracy, NLL, Brier and ECE averaged over the labels).

    Returns:
        Classification: ``accuracy``, ``nll``, ``brier``, ``ece``, ``mean_mi``,
        ``referral_needed@<t>`` (``None`` = never reached) and, with OOD data,
        ``ood_auroc_entropy`` / ``ood_auroc_mi`` (the latter only with S > 1: a single sample's
        MI is 0 everywhere). Regression: ``rmse``, ``gaussian_nll``,
        ``picp@0.68``, ``picp@0.95``, ``mean_variance`` and ``mean_epistemic_variance``.
    """
    if not out.is_classifier:
        # a point predictor (zero variance everywhere, e.g. a plain baseline) has no predictive
        # distribution: its NLL and interval coverage are undefined, not astronomically bad
        spread = bool(np.any(out.pred_variance > 0))
        res = {
            "rmse": M.rmse(out.pred_mean, y),
            "gaussian_nll": (
                M.gaussian_nll(out.pred_mean, out.pred_variance, y) if spread else None
            ),
            "mean_variance": _mean(out.pred_variance),
        }
        if out.epistemic_variance is not None:
            res["mean_epistemic_variance"] = _mean(out.epistemic_variance)
        for level in PICP_LEVELS:
            res[f"picp@{level:g}"] = (
                M.picp(out.pred_mean, out.pred_variance, y, level) if spread else None
            )
        return res
    p = out.mean_probs
    if out.multilabel:
        res = ML.label_metrics(p, y, n_bins)
    else:
        res = {
            "accuracy": M.accuracy(p, y),
            "nll": M.nll(p, y),
            "brier": M.brier(p, y),
            "ece": M.ece(p, y, n_bins),
        }
    res["mean_mi"] = _mean(out.mi)
    u, correct = _selective(out, y)
    for t in targets:
        res[referral_key(t)] = M.referral_needed(u, correct, t)
    if out.has_ood:
        res["ood_auroc_entropy"] = M.auroc(out.ood_entropy, out.entropy)
        if _ranks_by_mi(out):
            res["ood_auroc_mi"] = M.auroc(out.ood_mi, out.mi)
    return res


def _ranks_by_mi(out: Outputs) -> bool:
    """Whether MI can rank inputs: with one sample (a deterministic model, or S = 1) MI is 0 for
    every input, and an AUROC of all-tied scores (0.5) would describe the metric, not the
    model; then the ``*_mi`` rankings are absent (shown as '-')."""
    return out.num_samples > 1


def full_metrics(
    out: Outputs, y: np.ndarray, *, n_bins: int, targets: Sequence[float]
) -> dict[str, float | None]:
    """:func:`core_metrics` plus the descriptive ones.

    Classification extras: ``ece_equal_mass``, ``mce``, ``aurc``, ``mean_entropy``,
    ``entropy_correct`` / ``entropy_wrong`` and ``mi_correct`` / ``mi_wrong`` (means over
    correct / wrong predictions, for multi-label rows with every label right / not; ``None``
    if the group is empty), multi-label ``subset_accuracy`` and, with OOD data,
    ``ood_aupr_entropy``, ``ood_aupr_mi``, ``mean_entropy_ood``, ``mean_mi_ood``.
    """
    res = core_metrics(out, y, n_bins=n_bins, targets=targets)
    if not out.is_classifier:
        return res
    p = out.mean_probs
    if out.multilabel:
        res |= ML.label_metrics(p, y, n_bins, full=True)
    else:
        res |= {"ece_equal_mass": M.ece_equal_mass(p, y, n_bins), "mce": M.mce(p, y, n_bins)}
    res |= {"aurc": M.aurc(*_selective(out, y)), "mean_entropy": _mean(out.entropy)}
    correct = _row_correct(out, y)
    for key, u in (("entropy", out.entropy), ("mi", out.mi)):
        split = M.uncertainty_split(u, correct)
        res[f"{key}_correct"] = _nan_to_none(split["correct_mean"])
        res[f"{key}_wrong"] = _nan_to_none(split["wrong_mean"])
    if out.has_ood:
        res["ood_aupr_entropy"] = M.aupr(out.ood_entropy, out.entropy)
        if _ranks_by_mi(out):
            res["ood_aupr_mi"] = M.aupr(out.ood_mi, out.mi)
        res["mean_entropy_ood"] = _mean(out.ood_entropy)
        res["mean_mi_ood"] = _mean(out.ood_mi)
    return {k: res[k] for k in sorted(res, key=_rank)}


def _row_correct(out: Outputs, y: np.ndarray) -> np.ndarray:
    """``[N] bool``: the top class is right, or (multi-label) every label of the row is."""
    if out.multilabel:
        return ML.row_correct(out.mean_probs, y)
    return np.argmax(out.mean_probs, axis=1) == y


def _selective(out: Outputs, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(uncertainty, correct)`` for referral and AURC: rows ranked by predictive entropy;
    a multi-label row counts as its K label slots (per-label accuracy of the kept rows)."""
    if out.multilabel:
        return ML.label_slots(out.mean_probs, y, out.entropy)
    return out.entropy, _row_correct(out, y)


def _rank(key: str) -> int:
    """Display position of a metric key (stable for the ``referral_needed@t`` family)."""
    base = key.split("@")[0]
    return _ORDER.index(base) if base in _ORDER else len(_ORDER)


def _nan_to_none(v: float) -> float | None:
    return None if v is None or np.isnan(v) else float(v)


def _thin(fpr: np.ndarray, tpr: np.ndarray) -> tuple[list[float], list[float]]:
    """At most :data:`ROC_MAX_POINTS` exact ROC points, evenly spaced, endpoints kept."""
    if len(fpr) > ROC_MAX_POINTS:
        keep = np.unique(np.linspace(0, len(fpr) - 1, ROC_MAX_POINTS).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return fpr.tolist(), tpr.tolist()


def _pit(mu: np.ndarray, var: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Probability integral transform ``Phi((y - mu) / sigma)`` of Gaussian predictions
    (``[N, D]`` each); uniform on [0, 1] for a calibrated model."""
    z = (y - mu) / np.sqrt(np.maximum(var, 1e-12))
    return 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))


def regression_curves(out: Outputs, y: np.ndarray) -> dict[str, dict]:
    """Plot data of a regression model (``y``: ``[N, D]`` float targets).

    Returns:
        ``pred_vs_true``: ``true``, ``mean`` and (with a predictive variance) ``std`` of output
        0 for at most 400 evenly spaced rows; for models with a predictive distribution
        (variance > 0 somewhere) ``coverage``: ``nominal [19]`` levels 0.05..0.95 and
        ``observed [19]`` fraction of targets inside the central Gaussian interval (all
        outputs), and ``pit``: ``edges [11]`` and ``counts [10]`` of the PIT values.
    """
    mu, var = out.pred_mean, out.pred_variance
    n = len(mu)
    rows = np.unique(np.linspace(0, n - 1, min(n, SCATTER_MAX_POINTS)).round().astype(int))
    res: dict[str, dict] = {
        "pred_vs_true": {"output": 0, "true": y[rows, 0].tolist(), "mean": mu[rows, 0].tolist()}
    }
    if not np.any(var > 0):  # a point predictor: no interval, no PIT
        return res
    res["pred_vs_true"]["std"] = np.sqrt(var[rows, 0]).tolist()
    res["coverage"] = {
        "nominal": COVERAGE_LEVELS.tolist(),
        "observed": [M.picp(mu, var, y, float(level)) for level in COVERAGE_LEVELS],
    }
    edges = np.linspace(0.0, 1.0, PIT_BINS + 1)
    counts = np.histogram(_pit(mu, var, y), edges)[0]
    res["pit"] = {"edges": edges.tolist(), "counts": counts.tolist()}
    return res


def curves(out: Outputs, y: np.ndarray, *, n_bins: int) -> dict[str, dict]:
    """Plot data of one model (regression: :func:`regression_curves`).

    Returns:
        ``reliability``: :func:`metrics.reliability_curve` as lists (``[n_bins]``; NaN for
        empty bins; multi-label: all label decisions pooled); ``referral``: ``referral [F]``
        and ``accuracy [F]`` for F = 96 fractions 0..0.95; ``entropy_hist``: ``edges [31]``
        over ``[0, log C]`` (multi-label: ``[0, K log 2]``) and counts ``correct``,
        ``wrong`` (and ``ood``) ``[30]``; with OOD data ``roc_entropy`` / ``roc_mi``:
        ``fpr``, ``tpr`` (at most 201 points).
    """
    if not out.is_classifier:
        return regression_curves(out, y)
    p = out.mean_probs
    correct = _row_correct(out, y)
    rel = (
        ML.label_reliability(p, y, n_bins) if out.multilabel else M.reliability_curve(p, y, n_bins)
    )
    ref = M.referral_curve(*_selective(out, y), REFERRAL_FRACTIONS)
    top = p.shape[1] * np.log(2.0) if out.multilabel else np.log(p.shape[1])
    edges = np.linspace(0.0, max(top, 1e-6), HIST_BINS + 1)
    hist = {"edges": edges.tolist()}
    groups = {"correct": out.entropy[correct], "wrong": out.entropy[~correct]}
    if out.has_ood:
        groups["ood"] = out.ood_entropy
    for name, values in groups.items():
        hist[name] = np.histogram(np.clip(values, 0, edges[-1]), edges)[0].tolist()
    res = {
        "reliability": {k: v.tolist() for k, v in rel.items()},
        "referral": {k: v.tolist() for k, v in ref.items()},
        "entropy_hist": hist,
    }
    if out.has_ood:
        for key, pos, neg in (
            ("entropy", out.ood_entropy, out.entropy),
            ("mi", out.ood_mi, out.mi),
        ):
            fpr, tpr = _thin(*M.roc_curve(pos, neg))
            res[f"roc_{key}"] = {"fpr": fpr, "tpr": tpr}
    return res


def bootstrap_indices(
    n: int, m: int | None, n_boot: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """``n_boot`` pairs of row indices: ``[n]`` with replacement from ``[0, n)`` and, if
    ``m`` is given, ``[m]`` from ``[0, m)`` (OOD rows, drawn independently)."""
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(0, n, size=n), None if m is None else rng.integers(0, m, size=m))
        for _ in range(n_boot)
    ]


def percentile_interval(values: Sequence[float | None], alpha: float = 0.05) -> list | None:
    """``[low, high]`` percentile interval of the finite replicates (numpy linear quantiles,
    as :func:`metrics.bootstrap_ci`); ``None`` if fewer than half of them are finite."""
    v = np.array([np.nan if x is None else x for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0 or v.size < len(values) / 2:
        return None
    lo, hi = np.quantile(v, [alpha / 2.0, 1.0 - alpha / 2.0])
    return [float(lo), float(hi)]


def spread(values: Sequence[float | None]) -> float | None:
    """Range ``max - min`` of the finite values; ``None`` if there are none."""
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(max(v) - min(v)) if v else None


def replicate(
    fn: Callable[[Outputs, np.ndarray], dict],
    out: Outputs,
    y: np.ndarray,
    indices: Sequence[tuple[np.ndarray, np.ndarray | None]],
) -> list[dict]:
    """``fn(outputs, labels)`` on every bootstrap resample (rows of ``out`` and ``y`` jointly)."""
    return [fn(out.take(i, j), y[i]) for i, j in indices]
