"""Statistics on hand-made cases with known answers, and DeLong against independent sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.statistics import (
    PairedTest,
    auroc_ci,
    bootstrap_ci,
    delong,
    difference_of_differences,
    holm,
    paired_delong,
    unpaired_difference_ci,
    wilcoxon_signed_rank,
)


def _delong_brute_force(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong 1988 as written: every positive compared with every negative (O(m n))."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    v10 = psi.mean(axis=2)  # [k, m]
    v01 = psi.mean(axis=1)  # [k, n]
    k = scores.shape[0]
    cov = np.empty((k, k))
    for r in range(k):
        for s in range(k):
            s10 = np.sum((v10[r] - v10[r].mean()) * (v10[s] - v10[s].mean())) / (m - 1)
            s01 = np.sum((v01[r] - v01[r].mean()) * (v01[s] - v01[s].mean())) / (n - 1)
            cov[r, s] = s10 / m + s01 / n
    return v10.mean(axis=1), cov


def _correlated_scores(rng: np.random.Generator, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < 0.4).astype(float)
    shared = rng.normal(size=n)
    a = 1.0 * y + shared + 0.5 * rng.normal(size=n)
    b = 0.6 * y + shared + 0.5 * rng.normal(size=n)
    return y, np.stack([a, b])


def test_perfect_and_inverted_rankings() -> None:
    y = [0, 0, 1, 1]
    assert auroc_ci(y, [0.1, 0.2, 0.8, 0.9]).auc == 1.0
    assert auroc_ci(y, [0.9, 0.8, 0.2, 0.1]).auc == 0.0
    perfect = auroc_ci(y, [0.1, 0.2, 0.8, 0.9])
    assert perfect.se == 0.0 and perfect.low == perfect.high == 1.0


def test_hand_computed_auc_and_variance() -> None:
    # Positives 3, 5; negatives 1, 4. Comparisons: 3>1, 3<4, 5>1, 5>4 -> AUC 3/4.
    # V10 (per positive) = [1/2, 1]; V01 (per negative) = [1, 1/2].
    # var = var(V10)/m + var(V01)/n = (1/8)/2 + (1/8)/2 = 1/8.
    result = delong([1, 0, 1, 0], [3, 1, 5, 4])
    assert result.aucs[0] == pytest.approx(0.75)
    assert result.covariance[0, 0] == pytest.approx(0.125)


def test_ties_count_one_half() -> None:
    # Every score equal: AUROC 0.5 exactly, as Mann-Whitney counts ties.
    assert delong([0, 1, 0, 1], [2.0, 2.0, 2.0, 2.0]).aucs[0] == 0.5
    y = np.array([1, 1, 0, 0, 1, 0])
    s = np.array([1.0, 2.0, 1.0, 0.0, 2.0, 2.0])
    assert delong(y, s).aucs[0] == pytest.approx(roc_auc_score(y, s))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_delong_equals_brute_force_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, scores = _correlated_scores(rng, 120)
    scores = np.round(scores, 1)  # many ties
    fast = delong(y, scores)
    aucs, cov = _delong_brute_force(y, scores)
    np.testing.assert_allclose(fast.aucs, aucs, atol=1e-12)
    np.testing.assert_allclose(fast.covariance, cov, atol=1e-12)
    for r in range(2):
        assert fast.aucs[r] == pytest.approx(roc_auc_score(y, scores[r]))


def test_delong_standard_error_agrees_with_bootstrap() -> None:
    rng = np.random.default_rng(7)
    y, scores = _correlated_scores(rng, 400)
    ci = auroc_ci(y, scores[0])
    boot = np.empty(1500)
    for i in range(boot.size):
        idx = rng.integers(0, y.size, y.size)
        boot[i] = roc_auc_score(y[idx], scores[0, idx])
    assert ci.se == pytest.approx(boot.std(ddof=1), rel=0.12)
    # Same for the paired difference: DeLong's var(a - b) uses the covariance.
    diff_boot = np.empty(1500)
    for i in range(diff_boot.size):
        idx = rng.integers(0, y.size, y.size)
        diff_boot[i] = roc_auc_score(y[idx], scores[0, idx]) - roc_auc_score(y[idx], scores[1, idx])
    c = delong(y, scores).covariance
    assert math.sqrt(c[0, 0] + c[1, 1] - 2 * c[0, 1]) == pytest.approx(diff_boot.std(ddof=1),
                                                                          rel=0.12)  # fmt: skip


def test_confidence_interval_covers_the_truth_about_95_percent() -> None:
    # Binormal model with known AUROC Phi(d / sqrt(2)); 300 replications.
    d = 1.0
    true_auc = float(__import__("scipy").stats.norm.cdf(d / math.sqrt(2)))
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(300):
        y = np.r_[np.ones(60), np.zeros(60)]
        s = np.r_[rng.normal(d, 1, 60), rng.normal(0, 1, 60)]
        ci = auroc_ci(y, s)
        covered += ci.low <= true_auc <= ci.high
    assert 0.90 <= covered / 300 <= 0.99


def test_paired_delong_identical_models_and_a_real_difference() -> None:
    rng = np.random.default_rng(5)
    y, scores = _correlated_scores(rng, 400)
    same = paired_delong(y, scores[0], scores[0])
    assert same.difference == 0.0 and same.p_value == 1.0
    # A monotone transform leaves the ranking, hence AUROC and the test, unchanged.
    monotone = paired_delong(y, scores[0], np.exp(scores[0]))
    assert monotone.p_value == 1.0
    different = paired_delong(y, scores[0], scores[1])
    assert different.difference > 0.05 and different.p_value < 0.01
    assert paired_delong(y, scores[1], scores[0]).statistic == pytest.approx(-different.statistic)


def test_delong_refuses_degenerate_input() -> None:
    with pytest.raises(ValueError, match="2 positives"):
        delong([1, 0, 0, 0], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="finite"):
        delong([1, 1, 0, 0], [0.1, np.nan, 0.3, 0.4])
    # NaN labels are unknown cases and are left out.
    assert delong([1, 1, 0, 0, np.nan], [3, 4, 1, 2, 0]).aucs[0] == 1.0


def test_unpaired_difference_adds_variances() -> None:
    a = auroc_ci([1, 0, 1, 0], [3, 1, 5, 4])  # 0.75, var 1/8
    b = auroc_ci([1, 0, 1, 0], [3, 1, 5, 4])
    diff, low, high, p = unpaired_difference_ci(a, b)
    assert diff == 0.0 and p == pytest.approx(1.0)
    assert high == pytest.approx(1.959963984540054 * math.sqrt(0.25))
    assert low == pytest.approx(-high)


def test_wilcoxon_known_exact_p_value() -> None:
    # Six pairs, all differences positive and distinct: exact two-sided p = 2 / 2^6.
    first = [1.1, 2.2, 3.3, 4.4, 5.5, 6.6]
    second = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    result = wilcoxon_signed_rank(first, second)
    assert result.p_value == pytest.approx(2 / 64)
    assert result.statistic == 0.0  # the smaller rank sum (no negative differences)
    assert result.difference == pytest.approx(0.35)  # the mean difference
    # Mostly ties (IoU 0 at both resolutions): the mean still shows the improvement.
    assert wilcoxon_signed_rank([0, 0, 0, 0.3], [0, 0, 0, 0.1]).difference == pytest.approx(0.05)


def test_difference_of_independent_paired_differences() -> None:
    first = PairedTest(difference=0.10, statistic=0.0, p_value=1.0, n=10, se=0.03)
    second = PairedTest(difference=0.02, statistic=0.0, p_value=1.0, n=10, se=0.04)
    d, low, high, p = difference_of_differences(first, second)
    assert d == pytest.approx(0.08)  # se = hypot(0.03, 0.04) = 0.05
    assert (low, high) == pytest.approx((0.08 - 1.959964 * 0.05, 0.08 + 1.959964 * 0.05))
    assert p == pytest.approx(2 * (1 - 0.945200708), abs=1e-6)  # z = 1.6
    # paired_delong supplies the standard error it tested with.
    y = [1, 1, 1, 0, 0, 0]
    test = paired_delong(y, [3, 2, 1, 0, -1, -2], [3, 2, -3, 0, -1, -2])
    assert test.se > 0 and test.statistic == pytest.approx(test.difference / test.se)


def test_wilcoxon_no_difference_and_symmetric() -> None:
    assert wilcoxon_signed_rank([0.2, 0.3], [0.2, 0.3]).p_value == 1.0
    nothing = wilcoxon_signed_rank([], [])
    assert math.isnan(nothing.p_value) and nothing.n == 0
    # Differences +1, -2, +3, -4: W+ = 1 + 3 = 4, W- = 6. Of the 16 equally likely sign
    # patterns, 7 have W+ <= 4 ({}, {1}, {2}, {3}, {4}, {1,2}, {1,3}): p = 2 * 7/16.
    result = wilcoxon_signed_rank([1, 0, 3, 0], [0, 2, 0, 4])
    assert result.statistic == 4.0
    assert result.p_value == pytest.approx(14 / 16)


def test_bootstrap_mean_interval() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(10.0, 2.0, 400)
    estimate, low, high = bootstrap_ci(np.mean, [values], n_resamples=2000, seed=1)
    assert estimate == pytest.approx(values.mean())
    se = values.std(ddof=1) / math.sqrt(values.size)
    assert low == pytest.approx(estimate - 1.96 * se, abs=0.05)
    assert high == pytest.approx(estimate + 1.96 * se, abs=0.05)
    # A constant sample has a zero-width interval; paired arrays stay paired.
    assert bootstrap_ci(np.mean, [np.full(10, 3.0)]) == (3.0, 3.0, 3.0)
    ratio = bootstrap_ci(lambda tp, n: tp.sum() / n.sum(), [np.ones(20), np.full(20, 2.0)])
    assert ratio == (0.5, 0.5, 0.5)


def test_holm_adjustment() -> None:
    # Sorted p 0.01, 0.02, 0.04 -> 3*0.01, max(0.03, 2*0.02), max(0.04, 1*0.04).
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    adjusted = holm([0.01, math.nan])
    assert adjusted[0] == pytest.approx(0.01) and math.isnan(adjusted[1])
