"""Evaluation statistics for the resolution study.

* AUROC with its DeLong variance, computed with the fast algorithm of Sun and Xu (2014,
  "Fast implementation of DeLong's algorithm for comparing the areas under correlated
  receiver operating characteristic curves", IEEE Signal Processing Letters 21(11)):
  midranks replace DeLong's O(m*n) comparison of every positive with every negative, so
  ``k`` models on ``m + n`` cases cost O(k (m + n) log(m + n)).
* The paired DeLong test between two models scored on the same cases, and the unpaired
  variance of a difference between independent test sets (the in/out-of-distribution gap).
* The Wilcoxon signed-rank test for paired per-case scores (localisation).
* A percentile bootstrap for statistics without a closed form (mIoU, %-IN, box precision).
* Holm's step-down adjustment for tables of pairwise p-values.

Inputs: ``labels`` are 0/1 (anything > 0.5 is positive), ``scores`` are real numbers where
higher means "more likely positive" (logits are preferred to probabilities: a saturated
sigmoid creates ties that hide the ranking). Ties count one half, as in the Mann-Whitney U.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats as _stats

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DelongResult:
    """AUROCs of ``k`` models on the same cases and their DeLong covariance.

    ``aucs``: ``[k]``; ``covariance``: ``[k, k]`` (variance of each AUROC on the diagonal);
    ``positives``/``negatives``: the case counts ``m`` and ``n``.
    """

    aucs: FloatArray
    covariance: FloatArray
    positives: int
    negatives: int


@dataclass(frozen=True)
class AurocCI:
    """One AUROC with its DeLong standard error and (1 - alpha) confidence interval."""

    auc: float
    se: float
    low: float
    high: float
    positives: int
    negatives: int

    def to_dict(self) -> dict[str, float | int]:
        return {"auc": self.auc, "se": self.se, "low": self.low, "high": self.high,
                "positives": self.positives, "negatives": self.negatives}  # fmt: skip


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison: ``difference`` = first - second, two-sided ``p_value``."""

    difference: float
    statistic: float
    p_value: float
    n: int
    se: float = math.nan  # standard error of ``difference`` where a closed form gives one


def _binary(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Known cases as float64 ``(y, s)``; rows of ``scores`` are models ``[k, N]``."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if s.shape[1] != y.size:
        raise ValueError(f"{s.shape[1]} scores per model for {y.size} labels")
    known = ~np.isnan(y)
    if not np.all(np.isfinite(s[:, known])):
        raise ValueError("scores must be finite (use logits, not NaN/inf)")
    return (y[known] > 0.5).astype(np.float64), s[:, known]


def delong(labels: npt.ArrayLike, scores: npt.ArrayLike) -> DelongResult:
    """AUROCs and their DeLong covariance for ``scores`` ``[k, N]`` (or ``[N]``) on ``labels``.

    Sun and Xu: with ``Tx`` the midranks of the positives among themselves, ``Ty`` of the
    negatives among themselves and ``Tz`` of all cases together, a positive's placement
    ``V10 = (Tz - Tx) / n`` is the share of negatives it outranks (ties 1/2), a negative's
    ``V01 = 1 - (Tz - Ty) / m`` the share of positives that outrank it; AUROC is the mean
    of either, and ``S = cov(V10) / m + cov(V01) / n``.
    """
    y, s = _binary(labels, scores)
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positives and 2 negatives, got {m} and {n}")
    tx = _stats.rankdata(pos, axis=1)
    ty = _stats.rankdata(neg, axis=1)
    tz = _stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    aucs = v10.mean(axis=1)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return DelongResult(aucs=aucs, covariance=cov, positives=m, negatives=n)


def auroc_ci(labels: npt.ArrayLike, scores: npt.ArrayLike, level: float = 0.95) -> AurocCI:
    """AUROC with a DeLong ``level`` confidence interval (normal, clipped to [0, 1]).

    Perfect separation has a DeLong variance of exactly 0, so the interval is [1, 1]: the
    estimator's own degenerate answer, not certainty; read it with the case counts.
    """
    result = delong(labels, scores)
    auc = float(result.aucs[0])
    se = math.sqrt(max(float(result.covariance[0, 0]), 0.0))
    z = float(_stats.norm.ppf(0.5 + level / 2))
    return AurocCI(auc=auc, se=se, low=max(0.0, auc - z * se), high=min(1.0, auc + z * se),
                   positives=result.positives, negatives=result.negatives)  # fmt: skip


def paired_delong(
    labels: npt.ArrayLike, scores_a: npt.ArrayLike, scores_b: npt.ArrayLike
) -> PairedTest:
    """Two-sided DeLong test of AUROC(a) = AUROC(b), both scored on the same cases.

    ``statistic`` is ``z = (auc_a - auc_b) / sqrt(var_a + var_b - 2 cov_ab)``; identical
    rankings (zero variance of the difference) give ``z = 0`` and ``p = 1``.
    """
    result = delong(labels, np.stack([np.ravel(scores_a), np.ravel(scores_b)]))
    diff = float(result.aucs[0] - result.aucs[1])
    c = result.covariance
    var = float(c[0, 0] + c[1, 1] - 2 * c[0, 1])
    if var <= 1e-15:
        z = 0.0 if abs(diff) < 1e-12 else math.copysign(math.inf, diff)
    else:
        z = diff / math.sqrt(var)
    p = float(2 * _stats.norm.sf(abs(z)))
    n = result.positives + result.negatives
    return PairedTest(difference=diff, statistic=z, p_value=p, n=n, se=math.sqrt(max(var, 0.0)))


def unpaired_difference_ci(
    first: AurocCI, second: AurocCI, level: float = 0.95
) -> tuple[float, float, float, float]:
    """``(difference, low, high, p)`` for AUROCs of **independent** case sets.

    Used for the in/out-of-distribution gap: hold-out and external sets share no case,
    so the covariance is 0 and ``var(a - b) = var(a) + var(b)``.
    """
    diff = first.auc - second.auc
    se = math.hypot(first.se, second.se)
    z = float(_stats.norm.ppf(0.5 + level / 2))
    p = float(2 * _stats.norm.sf(abs(diff) / se)) if se > 0 else (1.0 if diff == 0 else 0.0)
    return diff, diff - z * se, diff + z * se, p


def difference_of_differences(
    first: PairedTest, second: PairedTest, level: float = 0.95
) -> tuple[float, float, float, float]:
    """``(d, low, high, p)`` for ``d = first.difference - second.difference`` where the two
    paired comparisons ran on **independent** case sets (variances add), e.g. how much more
    AUROC a resolution step buys in distribution than out of it (the gap's change)."""
    d = first.difference - second.difference
    se = math.hypot(first.se, second.se)
    z = float(_stats.norm.ppf(0.5 + level / 2))
    if not se > 0:
        return d, d, d, (1.0 if d == 0 else math.nan)
    return d, d - z * se, d + z * se, float(2 * _stats.norm.sf(abs(d) / se))


def wilcoxon_signed_rank(first: npt.ArrayLike, second: npt.ArrayLike) -> PairedTest:
    """Wilcoxon signed-rank test of paired scores (e.g. per-case IoU of two models).

    Zero differences are dropped from the test (Wilcoxon's convention); ``difference`` is
    the **mean** of ``first - second`` over all finite pairs, zeros included (a median would
    read 0 whenever most pairs tie, e.g. IoU 0 at both resolutions). All differences zero:
    ``p = 1``; no finite pair at all: ``p`` and ``difference`` NaN (nothing was tested).
    Exact p-values for small samples without ties, else the normal approximation (scipy's
    ``method="auto"``).
    """
    a = np.asarray(first, dtype=np.float64).ravel()
    b = np.asarray(second, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    if d.size == 0:
        return PairedTest(difference=math.nan, statistic=math.nan, p_value=math.nan, n=0)
    mean = float(d.mean())
    if np.count_nonzero(d) == 0:
        return PairedTest(difference=mean, statistic=0.0, p_value=1.0, n=int(d.size))
    result = _stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="auto")
    return PairedTest(difference=mean, statistic=float(result.statistic),
                      p_value=float(result.pvalue), n=int(d.size))  # fmt: skip


def bootstrap_ci(
    statistic: Callable[..., float],
    samples: Sequence[npt.ArrayLike],
    *,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(estimate, low, high)``: percentile bootstrap of ``statistic(*samples)``.

    The arrays in ``samples`` are paired (same length, resampled with the same case
    indices), e.g. per-case true positives and predicted-box counts for box precision.
    Resamples where the statistic is NaN are skipped.
    """
    arrays = [np.asarray(a) for a in samples]
    size = arrays[0].shape[0]
    if any(a.shape[0] != size for a in arrays):
        raise ValueError("bootstrap samples must have the same number of cases")
    estimate = float(statistic(*arrays))
    if size == 0:
        return estimate, math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, size, size)
        values[i] = statistic(*(a[idx] for a in arrays))
    values = values[np.isfinite(values)]
    if values.size == 0:
        return estimate, math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return estimate, float(low), float(high)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given; NaN stays NaN)."""
    p = np.asarray(p_values, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(p))
    out = p.copy()
    order = finite[np.argsort(p[finite], kind="stable")]
    k = order.size
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]
