"""training.trust: temperature scaling, ECE, the OOD fit, on data whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf
from sklearn.metrics import log_loss

from training.evaluate import Predictions
from training.trust import (
    OOD_ALPHA,
    TrustFit,
    binary_nll,
    expected_calibration_error,
    fit_feature_statistics,
    fit_temperature,
    fit_trust,
)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def test_ece_by_hand() -> None:
    # Two bins used: [0.2, 0.2] with one positive (gap 0.3), [0.9] with one positive (0.1).
    p = np.array([0.2, 0.2, 0.9])
    y = np.array([0.0, 1.0, 1.0])
    assert expected_calibration_error(p, y, bins=10) == pytest.approx((2 * 0.3 + 0.1) / 3)
    assert expected_calibration_error(np.array([1.0]), np.array([1.0])) == 0.0  # 1.0: last bin
    assert math.isnan(expected_calibration_error(p, np.full(3, np.nan)))


def test_nll_matches_sklearn_and_ignores_unknown_labels() -> None:
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=50), (rng.random(50) > 0.5).astype(float)
    assert binary_nll(z, y) == pytest.approx(log_loss(y, _sigmoid(z)), rel=1e-9)
    with_unknown = np.append(y, np.nan)
    assert binary_nll(np.append(z, 3.0), with_unknown, 2.0) == pytest.approx(
        log_loss(y, _sigmoid(z / 2.0)), rel=1e-9
    )


def test_temperature_recovers_the_overconfidence_factor() -> None:
    """Labels drawn from sigmoid(z), logits reported as 3 z: the fit finds T close to 3,
    and the ECE after scaling is far below the ECE before."""
    rng = np.random.default_rng(1)
    z = rng.normal(scale=1.5, size=20_000)
    y = (rng.random(z.size) < _sigmoid(z)).astype(float)
    temperature = fit_temperature(3 * z, y)
    assert temperature == pytest.approx(3.0, rel=0.05)
    before = expected_calibration_error(_sigmoid(3 * z), y)
    after = expected_calibration_error(_sigmoid(3 * z / temperature), y)
    assert before > 0.05 and after < before / 4
    assert fit_temperature(z, np.ones_like(z)) == 1.0  # one class: nothing to fit


def test_feature_statistics_are_class_means_and_ledoit_wolf() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random(400) > 0.5).astype(float)
    e = rng.normal(size=(400, 6)) + np.where(y[:, None] > 0.5, 2.0, -2.0)
    stats, shrinkage = fit_feature_statistics(e, y[:, None])
    assert np.allclose(stats.means[0], e[y < 0.5].mean(axis=0))
    assert np.allclose(stats.means[1], e[y > 0.5].mean(axis=0))
    centred = np.where(y[:, None] > 0.5, e - stats.means[1], e - stats.means[0])
    reference = LedoitWolf(assume_centered=True).fit(centred)
    assert np.allclose(stats.precision, reference.precision_)
    assert shrinkage == pytest.approx(reference.shrinkage_)
    # In distribution: distances of a few units; a shifted cloud is far away.
    inside = stats.score(rng.normal(size=(100, 6)) + 2.0)
    outside = stats.score(rng.normal(size=(100, 6)) + 8.0)
    assert np.median(inside) < 4 < np.min(outside)


def _predictions(rng: np.random.Generator, n: int, shift: float = 0.0) -> Predictions:
    y = (rng.random(n) > 0.5).astype(np.float32)[:, None]
    z = (2 * y[:, 0] - 1) * 1.5 + rng.normal(size=n)
    return Predictions(
        logits=z[:, None], probabilities=_sigmoid(z)[:, None], labels=y,
        embeddings=rng.normal(size=(n, 8)) + shift, loss=0.0,
    )  # fmt: skip


def test_fit_trust_flags_shifted_data_and_round_trips() -> None:
    rng = np.random.default_rng(3)
    trust = fit_trust(_predictions(rng, 400), _predictions(rng, 120), "validation split")
    assert trust.ood_alpha == OOD_ALPHA and trust.n_validation == 120
    assert trust.validation_flagged <= OOD_ALPHA
    assert "alpha=0.02" in trust.ood_rule and "n=120" in trust.ood_rule
    assert trust.flagged(_predictions(rng, 300)) <= 0.08  # fresh, same distribution
    assert trust.flagged(_predictions(rng, 300, shift=3.0)) > 0.95
    report = trust.calibration(_predictions(rng, 200))
    assert set(report) == {"before", "after", "nll_before", "nll_after", "n", "bins"}
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"trust": trust.to_state()}, buffer)  # as a checkpoint stores it
    buffer.seek(0)
    again = TrustFit.from_state(torch.load(buffer, weights_only=False)["trust"])
    assert np.array_equal(again.statistics.precision, trust.statistics.precision)
    assert (again.temperature, again.ood_threshold) == (trust.temperature, trust.ood_threshold)
    assert again.validation_calibration == trust.validation_calibration


def test_small_validation_sets_raise_alpha_and_say_so() -> None:
    rng = np.random.default_rng(4)
    trust = fit_trust(_predictions(rng, 100), _predictions(rng, 20), "tiny")
    assert trust.ood_alpha == pytest.approx(1 / 21)
    assert f"alpha={1 / 21:g}" in trust.ood_rule
