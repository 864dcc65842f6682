"""cxrmodel.ood and cxrmodel.calibration: the NumPy-only scoring the service runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cxrmodel.calibration import (
    calibrated_probabilities,
    calibrated_probability,
    calibrated_threshold,
    logit_of,
)
from cxrmodel.manifest import ModelFileError
from cxrmodel.ood import FeatureStatistics, conformal_threshold, load_statistics


def test_mahalanobis_by_hand_nearest_class_wins() -> None:
    stats = FeatureStatistics(
        means=np.array([[0.0, 0.0], [10.0, 0.0]]), precision=np.diag([1.0, 1 / 4.0])
    )
    e = np.array([[3.0, 0.0], [0.0, 4.0], [9.0, 2.0]])
    # (3, 0): 3 from class 0, 7 from class 1; (0, 4): 4/2 = 2; (9, 2): sqrt(1 + 1) from class 1
    assert np.allclose(stats.score(e), [3.0, 2.0, math.sqrt(2.0)])
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        stats.score(np.zeros((1, 3)))


def test_statistics_reject_mismatched_or_non_finite() -> None:
    with pytest.raises(ValueError, match="shapes"):
        FeatureStatistics(means=np.zeros((2, 3)), precision=np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        FeatureStatistics(means=np.full((1, 2), np.nan), precision=np.eye(2))


def test_statistics_round_trip_and_bad_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    stats = FeatureStatistics(means=rng.normal(size=(2, 5)), precision=a @ a.T + np.eye(5))
    loaded = load_statistics(stats.save(tmp_path / "s.npz"))
    assert np.array_equal(loaded.means, stats.means)
    assert np.array_equal(loaded.precision, stats.precision)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ModelFileError, match="not a feature-statistics file"):
        load_statistics(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", something=np.zeros(3))
    with pytest.raises(ModelFileError):
        load_statistics(tmp_path / "other.npz")


def test_conformal_threshold_rank_rule() -> None:
    scores = np.arange(1.0, 100.0)  # n = 99: rank ceil(100 * 0.98) = 98
    assert conformal_threshold(scores, 0.02) == 98.0
    assert conformal_threshold(np.arange(1.0, 20.0), 0.05) == 19.0  # rank ceil(20 * .95) = 19
    with pytest.raises(ValueError, match="too few"):
        conformal_threshold(np.arange(10.0), 0.02)  # rank 11 > n
    with pytest.raises(ValueError, match="alpha"):
        conformal_threshold(scores, 0.0)


def test_conformal_threshold_keeps_its_promise_on_exchangeable_scores() -> None:
    """Over many draws, a fresh in-distribution score exceeds the threshold <= alpha."""
    rng = np.random.default_rng(1)
    flagged = []
    for _ in range(2000):
        held_out, fresh = rng.normal(size=60), rng.normal()
        flagged.append(fresh > conformal_threshold(held_out, 0.05))
    assert np.mean(flagged) <= 0.05 + 0.015  # 3 standard errors of 2000 draws


def test_calibration_is_monotonic_and_keeps_decisions() -> None:
    logits = np.linspace(-6, 6, 101)
    for temperature in (0.3, 1.0, 2.5):
        p = calibrated_probabilities(logits, temperature)
        assert np.all(np.diff(p) > 0)
        assert p[50] == pytest.approx(0.5)
        assert calibrated_probability(2.0, temperature) == pytest.approx(
            1 / (1 + math.exp(-2.0 / temperature)), rel=1e-12
        )
        t = calibrated_threshold(0.42, temperature)
        raw = 1 / (1 + np.exp(-logits))
        assert np.array_equal(raw >= 0.42, p >= t - 1e-12)
    assert logit_of(0.5) == 0.0 and math.isfinite(logit_of(1.0))
