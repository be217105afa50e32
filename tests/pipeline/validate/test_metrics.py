"""Tests for qbnn.pipeline.validate.metrics against hand-computed values and sklearn."""

from __future__ import annotations

import importlib.util
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

try:
    from qbnn.pipeline.validate import metrics as M
except ImportError:  # package not installed: load the module from the source tree
    _path = Path(__file__).resolve().parents[3] / "pipeline" / "validate" / "metrics.py"
    _spec = importlib.util.spec_from_file_location("qbnn_pipeline_metrics", _path)
    M = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(M)


# --------------------------------------------------------------------------- fixtures

# 3-class, 4 samples.  conf = max row, pred = argmax.
#   row 0: conf .9, pred 0, label 0 -> correct
#   row 1: conf .8, pred 0, label 1 -> wrong
#   row 2: conf .6, pred 0, label 0 -> correct
#   row 3: conf .4, pred 0, label 2 -> wrong
P3 = np.array(
    [
        [0.9, 0.05, 0.05],
        [0.8, 0.1, 0.1],
        [0.6, 0.3, 0.1],
        [0.4, 0.35, 0.25],
    ]
)
Y3 = np.array([0, 1, 0, 2])

# 2-class, 4 samples, all confidences in different 1/15-wide bins:
#   conf .95 (bin 14, (14/15, 1])       correct
#   conf .62 (bin 9,  (9/15, 10/15]])   wrong (pred 0, label 1)
#   conf .70 (bin 10, (10/15, 11/15])   correct
#   conf .55 (bin 8,  (8/15, 9/15])     correct
P2 = np.array([[0.95, 0.05], [0.62, 0.38], [0.3, 0.7], [0.45, 0.55]])
Y2 = np.array([0, 1, 1, 1])

# Selective prediction example with a tie: sorted by uncertainty the correctness is
#   u=.1: T | u=.2: F, T (tie group) | u=.5: F
U_TIE = np.array([0.2, 0.5, 0.1, 0.2])
C_TIE = np.array([True, False, True, False])


def _dirichlet(seed: int, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(c), size=n)
    labels = rng.integers(0, c, size=n)
    return probs, labels


# --------------------------------------------------------------------------- accuracy / nll / brier


def test_accuracy_hand() -> None:
    # predictions 0,0,0,0 vs labels 0,1,0,2 -> 2 of 4 correct
    assert M.accuracy(P3, Y3) == pytest.approx(2 / 4)
    # P2: correct, wrong, correct, correct
    assert M.accuracy(P2, Y2) == pytest.approx(3 / 4)


@pytest.mark.parametrize(("label", "expected"), [(0, 1.0), (1, 0.0)])
def test_accuracy_argmax_tie_takes_first_class(label: int, expected: float) -> None:
    assert M.accuracy([[0.5, 0.5]], [label]) == expected


def test_accuracy_accepts_integral_float_labels() -> None:
    assert M.accuracy(P2, Y2.astype(float)) == pytest.approx(3 / 4)


def test_nll_hand() -> None:
    # true-class probabilities: .9, .1, .6, .25
    expected = -(math.log(0.9) + math.log(0.1) + math.log(0.6) + math.log(0.25)) / 4
    assert M.nll(P3, Y3) == pytest.approx(expected)


@pytest.mark.parametrize("eps", [1e-12, 1e-3])
def test_nll_clips_zero_probability_at_eps(eps: float) -> None:
    # true-class prob 0 -> clipped to eps; the other sample contributes -log(1) = 0
    assert M.nll([[1.0, 0.0], [1.0, 0.0]], [1, 0]) == pytest.approx(-math.log(1e-12) / 2)
    assert M.nll([[1.0, 0.0]], [1], eps=eps) == pytest.approx(-math.log(eps))


def test_nll_clip_only_affects_probabilities_below_eps() -> None:
    # .5 >= eps is untouched; 0 -> .1
    expected = (-math.log(0.5) - math.log(0.1)) / 2
    assert M.nll([[0.5, 0.5], [1.0, 0.0]], [0, 1], eps=0.1) == pytest.approx(expected)


def test_brier_hand() -> None:
    # row 0 label 0: (.9-1)^2 + (.1-0)^2 = .02 ; row 1 label 0: (.2-1)^2 + (.8-0)^2 = 1.28
    assert M.brier([[0.9, 0.1], [0.2, 0.8]], [0, 0]) == pytest.approx((0.02 + 1.28) / 2)


def test_single_class_present_in_labels() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    labels = np.array([0, 0])  # class 0 only; row 1 predicts class 1 -> wrong
    assert M.accuracy(probs, labels) == pytest.approx(0.5)
    assert M.nll(probs, labels) == pytest.approx(-(math.log(0.7) + math.log(0.2)) / 2)
    # (.3^2 + .2^2 + .1^2) = .14 ; (.8^2 + .5^2 + .3^2) = .98
    assert M.brier(probs, labels) == pytest.approx((0.14 + 0.98) / 2)
    # conf .7 (bin 10) correct -> |1-.7| ; conf .5 (bin 7) wrong -> |0-.5|
    assert M.ece(probs, labels) == pytest.approx((0.3 + 0.5) / 2)
    assert M.mce(probs, labels) == pytest.approx(0.5)


@pytest.mark.parametrize(("seed", "n_classes"), [(0, 2), (1, 3), (2, 10)])
def test_nll_matches_sklearn_log_loss(seed: int, n_classes: int) -> None:
    probs, labels = _dirichlet(seed, 60, n_classes)
    expected = skm.log_loss(labels, probs, labels=list(range(n_classes)))
    assert M.nll(probs, labels) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brier_binary_matches_sklearn(seed: int) -> None:
    probs, labels = _dirichlet(seed, 50, 2)
    # multi-class Brier sums both classes: 2 * (p1 - y)^2 per sample
    expected = 2 * skm.brier_score_loss(labels, probs[:, 1], pos_label=1)
    assert M.brier(probs, labels) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(("seed", "n_classes"), [(3, 3), (4, 7)])
def test_brier_multiclass_matches_sklearn(seed: int, n_classes: int) -> None:
    if "scale_by_half" not in inspect.signature(skm.brier_score_loss).parameters:
        pytest.skip("multi-class brier_score_loss needs scikit-learn >= 1.7")
    probs, labels = _dirichlet(seed, 50, n_classes)
    expected = skm.brier_score_loss(
        labels, probs, labels=list(range(n_classes)), scale_by_half=False
    )
    assert M.brier(probs, labels) == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------------- calibration


def test_ece_mce_hand_three_class() -> None:
    # n_bins=4, bins (0,.25], (.25,.5], (.5,.75], (.75,1]
    #   bin 3: conf .9 (T), .8 (F) -> acc .5, conf .85, weight 2/4 -> .35 * .5 = .175
    #   bin 2: conf .6 (T)         -> |1 - .6| * 1/4 = .1
    #   bin 1: conf .4 (F)         -> |0 - .4| * 1/4 = .1
    assert M.ece(P3, Y3, n_bins=4) == pytest.approx(0.175 + 0.1 + 0.1)
    assert M.mce(P3, Y3, n_bins=4) == pytest.approx(0.4)


def test_ece_mce_hand_two_class_default_bins() -> None:
    # every sample in its own bin of the 15: |1-.95| + |0-.62| + |1-.7| + |1-.55|
    assert M.ece(P2, Y2) == pytest.approx((0.05 + 0.62 + 0.3 + 0.45) / 4)
    assert M.mce(P2, Y2) == pytest.approx(0.62)


@pytest.mark.parametrize(
    ("n_bins", "expected"),
    [
        # one bin: |acc 3/4 - mean conf (.95+.62+.7+.55)/4|
        (1, abs(3 / 4 - (0.95 + 0.62 + 0.7 + 0.55) / 4)),
        # sorted conf .55(T) .62(F) | .70(T) .95(T)
        #   |1/2 - .585| * 2/4 + |1 - .825| * 2/4
        (2, abs(0.5 - 0.585) * 0.5 + abs(1 - 0.825) * 0.5),
        # one sample per bin: same as the equal-width value above
        (4, (0.05 + 0.62 + 0.3 + 0.45) / 4),
        # more bins than samples: empty bins are skipped
        (15, (0.05 + 0.62 + 0.3 + 0.45) / 4),
    ],
)
def test_ece_equal_mass_hand(n_bins: int, expected: float) -> None:
    assert M.ece_equal_mass(P2, Y2, n_bins=n_bins) == pytest.approx(expected)


def test_ece_equal_mass_three_class_hand() -> None:
    # sorted conf .4(F) .6(T) | .8(F) .9(T): |.5-.5|*2/4 + |.5-.85|*2/4
    assert M.ece_equal_mass(P3, Y3, n_bins=2) == pytest.approx(0.35 * 0.5)


def test_ece_equal_mass_ties_do_not_depend_on_order() -> None:
    # 3 tied confidences .7, two correct; with 2 bins the equal-count end (after 2 of the sorted
    # rows .6 .7 .7 .7) falls inside the tie group, so it moves to the group's end: one bin of 4,
    # |acc 3/4 - conf (.6 + 3 * .7) / 4| = |.75 - .675| = .075, whatever the rows' order
    probs = np.array([[0.7, 0.3], [0.7, 0.3], [0.6, 0.4], [0.7, 0.3]])
    labels = np.array([0, 1, 0, 0])
    expected = 0.075
    rng = np.random.default_rng(0)
    for _ in range(10):
        perm = rng.permutation(4)
        assert M.ece_equal_mass(probs[perm], labels[perm], n_bins=2) == pytest.approx(expected)


def test_ece_equal_mass_keeps_a_tie_group_in_one_bin() -> None:
    # issue 23: sorted .55(T) .6(T) .6(F) .6(F) .9(T) .9(T); 3 bins of 2 end at rows 2, 4, 6.
    # The end at 2 splits the .6 group (rows 1..3) and moves to 4; the end at 4 is then a
    # duplicate. Bins: {.55 T, .6 T, .6 F, .6 F}: |2 - 2.35| = .35 ; {.9 T, .9 T}: |2 - 1.8| = .2
    conf = np.array([0.6, 0.9, 0.55, 0.6, 0.9, 0.6])
    correct = np.array([False, True, True, True, True, False])
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.where(correct, 0, 1)
    assert M.ece_equal_mass(probs, labels, n_bins=3) == pytest.approx((0.35 + 0.2) / 6)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (np.array([0, 0, 0]), 0.0),  # all correct with confidence 1 -> perfectly calibrated
        (np.array([1, 1, 1]), 1.0),  # all wrong with confidence 1 -> maximal error
    ],
)
def test_ece_mce_all_correct_all_wrong(labels: np.ndarray, expected: float) -> None:
    probs = np.array([[1.0, 0.0]] * 3)
    for fn in (M.ece, M.ece_equal_mass, M.mce):
        assert fn(probs, labels) == pytest.approx(expected)
    assert M.accuracy(probs, labels) == pytest.approx(1.0 - expected)


def test_ece_zero_when_calibrated_within_bin() -> None:
    # confidence .75 everywhere, 3 of 4 correct -> acc == conf in the only non-empty bin
    probs = np.array([[0.75, 0.25]] * 4)
    assert M.ece(probs, [0, 0, 0, 1]) == pytest.approx(0.0)
    assert M.mce(probs, [0, 0, 0, 1]) == pytest.approx(0.0)


def test_reliability_curve_hand() -> None:
    rc = M.reliability_curve(P3, Y3, n_bins=4)
    np.testing.assert_allclose(rc["bin_lower"], [0.0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(rc["bin_upper"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(rc["count"], [0, 1, 1, 2])
    np.testing.assert_allclose(rc["confidence"], [np.nan, 0.4, 0.6, 0.85])
    np.testing.assert_allclose(rc["accuracy"], [np.nan, 0.0, 1.0, 0.5])
    assert np.issubdtype(rc["count"].dtype, np.integer)


def test_bins_are_left_open_right_closed_first_bin_includes_zero() -> None:
    # confidences 0, .25, .5, .75, 1 with n_bins=4 (edges exact in binary):
    # (0,.25] gets 0 and .25 ; (.25,.5] gets .5 ; (.5,.75] gets .75 ; (.75,1] gets 1
    probs = np.array(
        [
            [0.0, 0.0, 0.0, 0.0],
            [0.25, 0.25, 0.25, 0.25],
            [0.5, 0.5, 0.0, 0.0],
            [0.75, 0.25, 0.0, 0.0],
            [1.0, 0.0, 0.0, 0.0],
        ]
    )
    rc = M.reliability_curve(probs, np.zeros(5, dtype=int), n_bins=4)
    np.testing.assert_array_equal(rc["count"], [2, 1, 1, 1])
    np.testing.assert_allclose(rc["confidence"], [0.125, 0.5, 0.75, 1.0])


@pytest.mark.parametrize("seed", [0, 1])
def test_ece_equals_weighted_reliability_gap(seed: int) -> None:
    probs, labels = _dirichlet(seed, 200, 5)
    rc = M.reliability_curve(probs, labels)
    nz = rc["count"] > 0
    gaps = np.abs(rc["accuracy"][nz] - rc["confidence"][nz])
    assert M.ece(probs, labels) == pytest.approx(np.sum(gaps * rc["count"][nz]) / 200)
    assert M.mce(probs, labels) == pytest.approx(gaps.max())
    assert rc["count"].sum() == 200


# --------------------------------------------------------------------------- selective prediction


def test_risk_coverage_and_aurc_hand_with_tie() -> None:
    # groups end at k = 1, 3, 4 ; errors among retained: 0, 1, 2
    rc = M.risk_coverage(U_TIE, C_TIE)
    np.testing.assert_allclose(rc["coverage"], [1 / 4, 3 / 4, 1.0])
    np.testing.assert_allclose(rc["risk"], [0.0, 1 / 3, 2 / 4])
    # step function, c_0 = 0: (1/4-0)*0 + (3/4-1/4)*(1/3) + (1-3/4)*(1/2)
    #   = 0 + 1/6 + 1/8 = 7/24
    assert M.aurc(U_TIE, C_TIE) == pytest.approx(7 / 24)


def test_risk_coverage_and_aurc_hand_no_ties() -> None:
    # sorted by u: .1 T, .2 T, .3 F
    rc = M.risk_coverage([0.3, 0.1, 0.2], [False, True, True])
    np.testing.assert_allclose(rc["coverage"], [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(rc["risk"], [0.0, 0.0, 1 / 3])
    # (1/3)*0 + (1/3)*0 + (1/3)*(1/3) = 1/9 = mean(0, 0, 1/3)
    assert M.aurc([0.3, 0.1, 0.2], [False, True, True]) == pytest.approx(1 / 9)


@pytest.mark.parametrize(
    ("correct", "risk", "area"),
    [
        ([True] * 4, 0.0, 0.0),
        # risk 1 on every step: 4 * (1/4) * 1 = 1
        ([False] * 4, 1.0, 1.0),
    ],
)
def test_risk_coverage_all_correct_all_wrong(correct: list, risk: float, area: float) -> None:
    rc = M.risk_coverage([0.4, 0.3, 0.2, 0.1], correct)
    np.testing.assert_allclose(rc["risk"], [risk] * 4)
    assert M.aurc([0.4, 0.3, 0.2, 0.1], correct) == pytest.approx(area)


def test_risk_coverage_all_tied_is_single_point() -> None:
    rc = M.risk_coverage([0.5] * 4, [True, False, False, True])
    np.testing.assert_allclose(rc["coverage"], [1.0])
    np.testing.assert_allclose(rc["risk"], [0.5])
    # one step from coverage 0 to 1: (1 - 0) * 2/4 = overall error rate
    assert M.aurc([0.5] * 4, [True, False, False, True]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 7, 50])
def test_aurc_all_tied_is_error_rate(seed: int, n: int) -> None:
    c = np.random.default_rng(seed).random(n) < 0.7
    assert M.aurc(np.full(n, 0.3), c) == pytest.approx(1.0 - c.mean(), abs=1e-15)


@pytest.mark.parametrize(("seed", "n"), [(0, 1), (1, 10), (2, 57), (3, 200)])
def test_aurc_without_ties_is_mean_selective_risk(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    u = rng.permutation(n).astype(float)  # distinct values -> no ties
    c = rng.random(n) < 0.6
    wrong_sorted = ~c[np.argsort(u)]
    # risk of the k most certain samples, k = 1..N, computed one k at a time
    risks = [wrong_sorted[:k].mean() for k in range(1, n + 1)]
    assert M.aurc(u, c) == pytest.approx(np.mean(risks), abs=1e-12)


def test_accepts_integer_correct_flags() -> None:
    rc = M.risk_coverage(U_TIE, C_TIE.astype(int))
    np.testing.assert_allclose(rc["risk"], [0.0, 1 / 3, 2 / 4])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selective_metrics_invariant_to_permutation_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 5, size=40).astype(float)  # 5 distinct values -> heavy ties
    c = rng.random(40) < 0.6
    fr = np.linspace(0, 0.9, 13)
    ref_rc = M.risk_coverage(u, c)
    ref_curve = M.referral_curve(u, c, fr)["accuracy"]
    ref_aurc = M.aurc(u, c)
    ref_needed = [M.referral_needed(u, c, t) for t in (0.5, 0.6, 0.7, 0.8)]
    assert ref_rc["coverage"].shape == (len(np.unique(u)),)
    for _ in range(5):
        p = rng.permutation(40)
        rc = M.risk_coverage(u[p], c[p])
        np.testing.assert_allclose(rc["coverage"], ref_rc["coverage"], rtol=0, atol=1e-15)
        np.testing.assert_allclose(rc["risk"], ref_rc["risk"], rtol=0, atol=1e-15)
        assert M.aurc(u[p], c[p]) == pytest.approx(ref_aurc, abs=1e-15)
        np.testing.assert_allclose(M.referral_curve(u[p], c[p], fr)["accuracy"], ref_curve)
        assert [M.referral_needed(u[p], c[p], t) for t in (0.5, 0.6, 0.7, 0.8)] == ref_needed


def test_referral_curve_hand_with_tie() -> None:
    # sorted: .1 T | .2 F, .2 T | .5 F
    #   r=0   keep 4: 2/4
    #   r=.25 keep 3: {T, F, T} -> 2/3
    #   r=.5  keep 2: T + one of the tied pair (mean correctness 1/2) -> 1.5/2
    #   r=.7  refers floor(.7 * 4) = floor(2.8) = 2, keeps 2 -> 1.5/2
    #   r=.75 keep 1: T -> 1
    fractions = [0.0, 0.25, 0.5, 0.7, 0.75]
    out = M.referral_curve(U_TIE, C_TIE, fractions)
    np.testing.assert_allclose(out["referral"], fractions)
    np.testing.assert_allclose(out["accuracy"], [2 / 4, 2 / 3, 1.5 / 2, 1.5 / 2, 1.0])


def test_referral_curve_default_fractions() -> None:
    # 20 samples, the 10 most certain are correct; referring k = 20 * r keeps 20 - k
    u = np.arange(20.0)
    c = u < 10
    out = M.referral_curve(u, c)
    np.testing.assert_allclose(out["referral"], np.arange(20) * 0.05)
    keep = 20 - np.arange(20)  # r = .95 refers 19 and keeps 1
    np.testing.assert_allclose(out["accuracy"], np.minimum(10, keep) / keep)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (1.0, 0.75),  # keep k=1 (acc 1)
        (0.7, 0.75),  # k=3 gives 2/3 < .7; k=2 would cut the tie -> not allowed
        (0.6, 0.25),  # keep k=3 (acc 2/3)
        (0.5, 0.0),  # keep everything (acc 1/2)
        (0.0, 0.0),
    ],
)
def test_referral_needed_hand(target: float, expected: float) -> None:
    assert M.referral_needed(U_TIE, C_TIE, target) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("uncertainty", "correct", "target"),
    [
        ([0.1, 0.2, 0.3], [False, False, False], 0.1),  # all wrong
        ([0.1, 0.9], [False, True], 0.9),  # only "refer everything" would reach it
        ([0.5] * 4, [True, True, False, False], 0.6),  # tie group cannot be split
    ],
)
def test_referral_needed_unreachable_returns_none(
    uncertainty: list, correct: list, target: float
) -> None:
    assert M.referral_needed(uncertainty, correct, target) is None


def test_referral_needed_all_correct_is_zero() -> None:
    assert M.referral_needed([0.3, 0.2, 0.1], [True] * 3, 1.0) == 0.0


# --------------------------------------------------------------------------- OOD detection


def test_auroc_aupr_roc_hand() -> None:
    pos, neg = [3.0, 2.0], [1.0, 2.0]
    # pairs (pos, neg): (3,1)=1 (3,2)=1 (2,1)=1 (2,2)=.5 -> 3.5 / 4
    assert M.auroc(pos, neg) == pytest.approx(3.5 / 4)
    # thresholds 3: P=1, R=.5 ; 2: P=2/3, R=1 ; 1: P=1/2, R=1
    assert M.aupr(pos, neg) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    fpr, tpr = M.roc_curve(pos, neg)
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 1.0, 1.0])


@pytest.mark.parametrize(
    ("pos", "neg", "auc", "ap"),
    [
        ([5.0, 4.0], [1.0, 2.0, 3.0], 1.0, 1.0),  # perfect separation
        # reversed: positives ranked last; AP = (1/2)*(1/4) + (1/2)*(2/5)
        ([1.0, 2.0], [3.0, 4.0, 5.0], 0.0, 0.5 * 1 / 4 + 0.5 * 2 / 5),
        ([1.0, 1.0], [1.0, 1.0, 1.0], 0.5, 2 / 5),  # all tied: AP = prevalence
    ],
)
def test_auroc_aupr_extremes(pos: list, neg: list, auc: float, ap: float) -> None:
    assert M.auroc(pos, neg) == pytest.approx(auc)
    assert M.aupr(pos, neg) == pytest.approx(ap)


@pytest.mark.parametrize(("seed", "n1", "n0"), [(0, 30, 70), (1, 100, 15), (2, 1, 9), (3, 50, 50)])
def test_ood_metrics_match_sklearn_with_ties(seed: int, n1: int, n0: int) -> None:
    rng = np.random.default_rng(seed)
    pos = np.round(rng.normal(0.5, 1.0, n1), 1)  # rounding creates many ties
    neg = np.round(rng.normal(0.0, 1.0, n0), 1)
    y = np.r_[np.ones(n1), np.zeros(n0)]
    s = np.r_[pos, neg]
    assert M.auroc(pos, neg) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert M.aupr(pos, neg) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    fpr, tpr = M.roc_curve(pos, neg)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    # the rank-based AUROC equals the trapezoidal area of the ROC curve
    assert M.auroc(pos, neg) == pytest.approx(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def test_auroc_independent_of_input_order() -> None:
    rng = np.random.default_rng(7)
    pos, neg = rng.integers(0, 4, 20).astype(float), rng.integers(0, 4, 25).astype(float)
    ref = (M.auroc(pos, neg), M.aupr(pos, neg))
    got = (M.auroc(pos[::-1], rng.permutation(neg)), M.aupr(rng.permutation(pos), neg[::-1]))
    assert got == pytest.approx(ref)


# --------------------------------------------------------------------------- uncertainty


@pytest.mark.parametrize(
    ("probs", "expected"),
    [
        ([0.5, 0.5], math.log(2)),
        ([1.0, 0.0], 0.0),  # 0 * log 0 = 0
        ([0.25] * 4, math.log(4)),
        ([0.2, 0.3, 0.5], -(0.2 * math.log(0.2) + 0.3 * math.log(0.3) + 0.5 * math.log(0.5))),
        ([0.0, 0.5, 0.0, 0.5], math.log(2)),
    ],
)
def test_entropy_hand(probs: list, expected: float) -> None:
    out = M.entropy(probs)
    assert np.ndim(out) == 0
    assert float(out) == pytest.approx(expected, abs=1e-15)


def test_entropy_keeps_leading_shape() -> None:
    p = np.zeros((2, 3, 4))
    p[..., 0] = 1.0  # entropy 0
    p[1, 2] = 0.25  # entropy log 4
    out = M.entropy(p)
    assert out.shape == (2, 3)
    expected = np.zeros((2, 3))
    expected[1, 2] = math.log(4)
    np.testing.assert_allclose(out, expected, atol=1e-15)


def test_uncertainty_split_hand() -> None:
    out = M.uncertainty_split([1.0, 2.0, 3.0, 4.0], [True, True, False, True])
    assert out["correct_mean"] == pytest.approx((1 + 2 + 4) / 3)
    assert out["wrong_mean"] == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("flag", "empty_key", "full_key"), [(True, "wrong", "correct"), (False, "correct", "wrong")]
)
def test_uncertainty_split_empty_group_is_nan(flag: bool, empty_key: str, full_key: str) -> None:
    out = M.uncertainty_split([1.0, 3.0], [flag, flag])
    assert math.isnan(out[f"{empty_key}_mean"])
    assert out[f"{full_key}_mean"] == pytest.approx(2.0)


# --------------------------------------------------------------------------- regression


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        ([1.0, 2.0, 3.0], [1.0, 2.0, 5.0], math.sqrt(4 / 3)),
        ([[0.0, 1.0], [2.0, 3.0]], [[1.0, 1.0], [2.0, 0.0]], math.sqrt((1 + 9) / 4)),
        ([1.5], [1.5], 0.0),
    ],
)
def test_rmse_hand(pred: list, target: list, expected: float) -> None:
    assert M.rmse(pred, target) == pytest.approx(expected)


def test_gaussian_nll_hand() -> None:
    # element 1: mu 0, var 1, y 1 -> .5 (log 2pi + 1)
    # element 2: mu 2, var 4, y 0 -> .5 (log 8pi + (0 - 2)^2 / 4)
    e1 = 0.5 * (math.log(2 * math.pi) + 1.0)
    e2 = 0.5 * (math.log(8 * math.pi) + 4.0 / 4.0)
    assert M.gaussian_nll([0.0, 2.0], [1.0, 4.0], [1.0, 0.0]) == pytest.approx((e1 + e2) / 2)
    # 2-D input: mean over all elements
    got = M.gaussian_nll([[0.0, 2.0]], [[1.0, 4.0]], [[1.0, 0.0]])
    assert got == pytest.approx((e1 + e2) / 2)


@pytest.mark.parametrize("min_variance", [1e-12, 1e-2])
def test_gaussian_nll_clips_variance(min_variance: float) -> None:
    got = M.gaussian_nll([0.0], [0.0], [0.0], min_variance=min_variance)
    assert got == pytest.approx(0.5 * math.log(2 * math.pi * min_variance))


@pytest.mark.parametrize(
    ("level", "targets", "expected"),
    [
        # z(.95) = 1.959964 ; inside: 0, 1.9, -1.9599, ; outside: 1.9601, -3
        (0.95, [0.0, 1.9, -1.9599, 1.9601, -3.0], 3 / 5),
        # z(.68) = 0.994458 ; inside: 0.5, -0.9944 ; outside: 0.9945, 1.5
        (0.68, [0.5, -0.9944, 0.9945, 1.5], 2 / 4),
    ],
)
def test_picp_hand(level: float, targets: list, expected: float) -> None:
    n = len(targets)
    assert M.picp(np.zeros(n), np.ones(n), targets, level) == pytest.approx(expected)


def test_picp_scales_with_variance_and_mean() -> None:
    # mean 10, var 4 (sd 2): half-width 2 * 1.959964 = 3.92
    mu, var = np.full((2, 2), 10.0), np.full((2, 2), 4.0)
    y = np.array([[13.9, 6.1], [14.0, 5.0]])
    assert M.picp(mu, var, y, 0.95) == pytest.approx(2 / 4)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_resamples_rows_jointly() -> None:
    def pairs_intact(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.all(b == 2 * a))

    x = np.arange(30.0)
    assert M.bootstrap_ci(pairs_intact, x, 2 * x, n_boot=50) == (1.0, 1.0)


def test_bootstrap_ci_of_mean_is_sensible() -> None:
    x = np.random.default_rng(0).normal(0.0, 1.0, 400)
    low, high = M.bootstrap_ci(np.mean, x, n_boot=500, seed=1)
    assert low < x.mean() < high
    # normal-theory width 2 * 1.96 / sqrt(400) = .196
    assert 0.14 < high - low < 0.26


def test_bootstrap_ci_seed_and_alpha() -> None:
    x = np.random.default_rng(0).normal(size=50)
    a = M.bootstrap_ci(np.mean, x, seed=3)
    assert M.bootstrap_ci(np.mean, x, seed=3) == a
    assert M.bootstrap_ci(np.mean, x, seed=4) != a
    narrow = M.bootstrap_ci(np.mean, x, seed=3, alpha=0.5)
    assert a[0] < narrow[0] <= narrow[1] < a[1]


def test_bootstrap_ci_constant_and_with_metric() -> None:
    assert M.bootstrap_ci(np.mean, np.full(10, 3.0)) == (3.0, 3.0)
    probs, labels = _dirichlet(0, 80, 3)
    low, high = M.bootstrap_ci(M.accuracy, probs, labels, n_boot=100)
    assert 0.0 <= low <= M.accuracy(probs, labels) <= high <= 1.0


# --------------------------------------------------------------------------- bad input

CLASSIFICATION_FNS = [
    M.accuracy,
    M.nll,
    M.brier,
    M.ece,
    M.ece_equal_mass,
    M.mce,
    M.reliability_curve,
]


@pytest.mark.parametrize("fn", CLASSIFICATION_FNS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        ([0.5, 0.5], [0], "2-D"),
        (np.full((2, 2, 2), 0.5), [0, 0], "2-D"),
        (np.empty((0, 3)), [], "non-empty"),
        (np.empty((2, 0)), [0, 0], "non-empty"),
        (P2, [0, 1, 1], r"shape \(4,\)"),
        (P2, [[0, 1, 1, 1]], r"shape \(4,\)"),
        (P2, [0, 1, 2, 1], r"\[0, 2\)"),
        (P2, [0, -1, 1, 1], r"\[0, 2\)"),
        (P2, [0.0, 0.5, 1.0, 1.0], "integers"),
        (P2, ["a", "b", "a", "b"], "integers"),
        ([[0.5, np.nan]], [0], "finite"),
        ([[1.2, -0.2]], [0], r"\[0, 1\]"),
        ([[3.0, 1.0]], [0], r"\[0, 1\]"),  # logits instead of probabilities
    ],
)
def test_classification_bad_input(fn, probs, labels, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(probs, labels)


@pytest.mark.parametrize("fn", [M.ece, M.ece_equal_mass, M.mce, M.reliability_curve])
@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True])
def test_bad_n_bins(fn, n_bins) -> None:
    with pytest.raises(ValueError, match="n_bins"):
        fn(P2, Y2, n_bins=n_bins)


@pytest.mark.parametrize("eps", [0.0, -1e-3])
def test_nll_bad_eps(eps: float) -> None:
    with pytest.raises(ValueError, match="eps"):
        M.nll(P2, Y2, eps=eps)


SELECTIVE_FNS = [
    M.risk_coverage,
    M.aurc,
    M.referral_curve,
    lambda u, c: M.referral_needed(u, c, 0.5),
    M.uncertainty_split,
]


@pytest.mark.parametrize("fn", SELECTIVE_FNS)
@pytest.mark.parametrize(
    ("uncertainty", "correct", "match"),
    [
        ([], [], "uncertainty must be non-empty"),
        ([[0.1, 0.2]], [True, False], "uncertainty must be 1-D"),
        ([0.1, np.nan], [True, False], "NaN"),
        ([0.1, 0.2], [True], r"correct must have shape \(2,\)"),
        ([0.1, 0.2], [True, 2], "boolean or 0/1"),
    ],
)
def test_selective_bad_input(fn, uncertainty, correct, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(uncertainty, correct)


@pytest.mark.parametrize("fractions", [[1.0], [0.0, -0.1], [], [0.5, np.nan]])
def test_referral_curve_bad_fractions(fractions: list) -> None:
    with pytest.raises(ValueError, match="fractions"):
        M.referral_curve(U_TIE, C_TIE, fractions)


@pytest.mark.parametrize("target", [-0.1, 1.5, float("nan")])
def test_referral_needed_bad_target(target: float) -> None:
    with pytest.raises(ValueError, match="target"):
        M.referral_needed(U_TIE, C_TIE, target)


@pytest.mark.parametrize("fn", [M.auroc, M.aupr, M.roc_curve])
@pytest.mark.parametrize(
    ("pos", "neg", "match"),
    [
        ([], [1.0], "scores_pos must be non-empty"),
        ([1.0], [], "scores_neg must be non-empty"),
        ([[1.0]], [1.0], "scores_pos must be 1-D"),
        ([1.0], [np.nan], "scores_neg must not contain NaN"),
    ],
)
def test_ood_bad_input(fn, pos, neg, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(pos, neg)


@pytest.mark.parametrize(
    ("probs", "match"),
    [([], "non-empty"), (0.5, "non-empty"), ([0.5, -0.5], "non-negative"), ([np.nan], "finite")],
)
def test_entropy_bad_input(probs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        M.entropy(probs)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: M.rmse([1.0, 2.0, 3.0], [[1.0], [2.0], [3.0]]), "same shape"),
        (lambda: M.rmse([1.0, 2.0], [1.0]), "same shape"),
        (lambda: M.rmse([], []), "non-empty"),
        (lambda: M.rmse([1.0], [np.nan]), "target must be finite"),
        (lambda: M.gaussian_nll([0.0], [1.0, 1.0], [0.0]), "same shape"),
        (lambda: M.gaussian_nll([0.0], [-1.0], [0.0]), "pred_variance must be >= 0"),
        (lambda: M.gaussian_nll([0.0], [1.0], [0.0], min_variance=0.0), "min_variance"),
        (lambda: M.picp([0.0], [-1.0], [0.0], 0.95), "pred_variance must be >= 0"),
        (lambda: M.picp([0.0], [1.0], [0.0], 0.0), "level"),
        (lambda: M.picp([0.0], [1.0], [0.0], 1.0), "level"),
        (lambda: M.picp([0.0], [np.inf], [0.0], 0.5), "pred_variance must be finite"),
    ],
)
def test_regression_bad_input(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((), {}, "at least one array"),
        (([1.0, 2.0], [1.0]), {}, "equal leading length"),
        (([],), {}, "non-empty"),
        ((3.0,), {}, "equal leading length"),
        (([1.0, 2.0],), {"n_boot": 0}, "n_boot"),
        (([1.0, 2.0],), {"alpha": 0.0}, "alpha"),
        (([1.0, 2.0],), {"alpha": 1.0}, "alpha"),
    ],
)
def test_bootstrap_bad_input(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        M.bootstrap_ci(np.mean, *args, **kwargs)
