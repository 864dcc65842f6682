"""What makes a model's answer trustworthy, fitted after training: calibration and OOD.

* **Calibration** (Guo et al., ICML 2017): one temperature ``T`` fitted on the validation
  split by minimising the binary cross-entropy of ``sigmoid(logit / T)``; the expected
  calibration error (ECE: equal-width bins, the bin-weighted mean gap between the mean
  probability and the fraction positive) is measured before and after.
* **Out-of-distribution score** (:mod:`cxrmodel.ood`): class-conditional Gaussians with a
  shared Ledoit-Wolf-shrunk covariance fitted on the training split's embeddings; the
  threshold is the split-conformal quantile of the validation split's scores.

:func:`fit_trust` runs both from a checkpoint's own train/validation split (the same
patient-level split the training loop made) and returns a :class:`TrustFit`, which
``training.publish`` stores in the checkpoint and turns into the manifest's
``calibration`` and ``ood`` blocks and the ``ood`` statistics file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize_scalar
from sklearn.covariance import LedoitWolf

from cxrmodel.calibration import calibrated_probabilities
from cxrmodel.ood import FeatureStatistics, conformal_threshold, describe_rule
from training.evaluate import Predictions, known_binary

#: equal-width bins of the ECE (Guo et al. use 15)
ECE_BINS = 15
#: at most this fraction of in-distribution images is flagged (split-conformal)
OOD_ALPHA = 0.02
#: the fitted temperature is kept inside [1/20, 20]: outside, the logits carry no signal
_LOG_T_BOUND = math.log(20.0)


def expected_calibration_error(
    probabilities: npt.ArrayLike, labels: npt.ArrayLike, bins: int = ECE_BINS
) -> float:
    """ECE of binary probabilities: ``sum_b n_b / N * |mean(p in b) - mean(y in b)|`` over
    ``bins`` equal-width bins of ``[0, 1]`` (1.0 falls in the last). NaN labels are
    ignored; NaN when nothing is known."""
    y, p = known_binary(labels, probabilities)
    if p.size == 0:
        return math.nan
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    confidence = np.bincount(index, weights=p, minlength=bins)
    positives = np.bincount(index, weights=y, minlength=bins)
    filled = counts > 0
    gaps = np.abs(confidence[filled] - positives[filled]) / counts[filled]
    return float(np.sum(gaps * counts[filled]) / p.size)


def binary_nll(logits: npt.ArrayLike, labels: npt.ArrayLike, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of ``sigmoid(logit / temperature)`` over known labels
    (what temperature scaling minimises); NaN when nothing is known."""
    y, z = known_binary(labels, logits)
    if z.size == 0:
        return math.nan
    s = z / temperature
    # -log sigmoid(s) = logaddexp(0, -s); -log(1 - sigmoid(s)) = logaddexp(0, s)
    return float(np.mean(y * np.logaddexp(0.0, -s) + (1 - y) * np.logaddexp(0.0, s)))


def fit_temperature(logits: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """The ``T > 0`` minimising :func:`binary_nll` over known labels (bounded search over
    ``log T``); 1.0 when one class only."""
    y, z = known_binary(labels, logits)
    if z.size == 0 or np.unique(y).size < 2:
        return 1.0
    best = minimize_scalar(lambda log_t: binary_nll(z, y, math.exp(log_t)),
                           bounds=(-_LOG_T_BOUND, _LOG_T_BOUND), method="bounded",
                           options={"xatol": 1e-4})  # fmt: skip
    return float(math.exp(best.x))


def fit_feature_statistics(
    embeddings: npt.ArrayLike, labels: npt.ArrayLike
) -> tuple[FeatureStatistics, float]:
    """Class means (label 0 binarised; unknown labels count toward no class) and the
    shared Ledoit-Wolf-shrunk covariance's inverse. Returns ``(statistics, shrinkage)``.

    The covariance is estimated on the embeddings centred by their own class mean (the
    "tied" covariance of Lee et al.); ``LedoitWolf`` picks the shrinkage towards a scaled
    identity that minimises the expected squared error of the estimate.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    y = y[:, 0] if y.ndim == 2 else y
    if e.ndim != 2 or len(e) != len(y) or len(e) < 2:
        raise ValueError(f"need [N, C] embeddings with N >= 2 matching labels; got {e.shape}")
    known = ~np.isnan(y)
    classes = [c for c in (0.0, 1.0) if np.any(known & ((y > 0.5) == (c > 0.5)))]
    means, centred = [], []
    for c in classes:
        rows = e[known & ((y > 0.5) == (c > 0.5))]
        means.append(rows.mean(axis=0))
        centred.append(rows - means[-1])
    if not means:  # no known label at all: one Gaussian
        means, centred = [e.mean(axis=0)], [e - e.mean(axis=0)]
    estimator = LedoitWolf(assume_centered=True).fit(np.concatenate(centred))
    stats = FeatureStatistics(means=np.stack(means), precision=np.asarray(estimator.precision_))
    return stats, float(estimator.shrinkage_)


@dataclass(frozen=True)
class TrustFit:
    """Calibration and OOD fitted on a checkpoint's train/validation split."""

    temperature: float
    validation_calibration: dict[str, Any]  # see :meth:`calibration` (validation split)
    statistics: FeatureStatistics
    shrinkage: float
    ood_threshold: float
    ood_alpha: float  # the alpha the threshold keeps (raised when validation is small)
    ood_rule: str
    n_fit: int  # training images behind the feature statistics
    n_validation: int
    validation_flagged: float  # fraction of validation images above the threshold

    def to_state(self) -> dict[str, Any]:
        """Plain values and arrays for ``torch.save`` (a checkpoint's ``trust`` key)."""
        return {
            "temperature": self.temperature,
            "validation_calibration": self.validation_calibration,
            "means": self.statistics.means,
            "precision": self.statistics.precision, "shrinkage": self.shrinkage,
            "ood_threshold": self.ood_threshold, "ood_alpha": self.ood_alpha,
            "ood_rule": self.ood_rule, "n_fit": self.n_fit, "n_validation": self.n_validation,
            "validation_flagged": self.validation_flagged,
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TrustFit:
        stats = FeatureStatistics(
            means=np.asarray(state["means"]), precision=np.asarray(state["precision"])
        )
        fields = {k: v for k, v in state.items() if k not in ("means", "precision")}
        return cls(statistics=stats, **fields)

    def calibration(self, predictions: Predictions) -> dict[str, Any]:
        """Label 0's calibration on ``predictions``, before and after temperature scaling."""
        return calibration_report(
            predictions.logits[:, 0], predictions.labels[:, 0], self.temperature
        )

    def flagged(self, predictions: Predictions) -> float:
        """The fraction of ``predictions``' images scored out of distribution."""
        scores = self.statistics.score(predictions.embeddings)
        return float(np.mean(scores > self.ood_threshold)) if len(scores) else math.nan


def calibration_report(
    logits: npt.ArrayLike, labels: npt.ArrayLike, temperature: float
) -> dict[str, Any]:
    """``{"before", "after", "nll_before", "nll_after", "n", "bins"}``: the ECE (the
    headline) and the cross-entropy (what the temperature minimises; on a few hundred
    images the 15-bin ECE is noisy, the cross-entropy much less) before and after
    scaling by ``temperature``."""
    known, _ = known_binary(labels, logits)
    return {
        "before": expected_calibration_error(calibrated_probabilities(logits, 1.0), labels),
        "after": expected_calibration_error(calibrated_probabilities(logits, temperature), labels),
        "nll_before": binary_nll(logits, labels),
        "nll_after": binary_nll(logits, labels, temperature),
        "n": int(known.size),
        "bins": ECE_BINS,
    }


def fit_trust(train: Predictions, validation: Predictions, validation_data: str) -> TrustFit:
    """Fit the temperature and the OOD statistics and threshold.

    ``train``: predictions on the training split (the feature statistics); ``validation``:
    on the validation split (the temperature, the OOD threshold and the before/after
    ECE); ``validation_data`` names it for the threshold rule.
    """
    logits, labels = validation.logits[:, 0], validation.labels[:, 0]
    temperature = fit_temperature(logits, labels)
    stats, shrinkage = fit_feature_statistics(train.embeddings, train.labels)
    scores = stats.score(validation.embeddings)
    # Small validation sets cannot keep a small alpha (conformal_threshold would refuse):
    # the threshold is then the largest held-out score, and the rule says which alpha holds.
    alpha = max(OOD_ALPHA, 1.0 / (len(scores) + 1))
    threshold = conformal_threshold(scores, alpha)
    return TrustFit(
        temperature=temperature,
        validation_calibration=calibration_report(logits, labels, temperature),
        statistics=stats,
        shrinkage=shrinkage,
        ood_threshold=threshold,
        ood_alpha=alpha,
        ood_rule=describe_rule(alpha, len(scores), validation_data),
        n_fit=len(train.embeddings),
        n_validation=len(scores),
        validation_flagged=float(np.mean(scores > threshold)),
    )
