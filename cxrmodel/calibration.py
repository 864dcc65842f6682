"""The served probability: the logit, temperature-scaled (Guo et al., ICML 2017).

``probability = sigmoid(logit / T)`` with ``T > 0`` fitted on validation data
(``training/trust.py``). Scaling by ``T`` is monotonic, so it changes no ranking (AUROC)
and no decision: the operating threshold is carried over as
``calibrated_threshold(t, T) = sigmoid(logit(t) / T)``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt


def sigmoid(x: float) -> float:
    """Numerically safe logistic function of a Python float."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def calibrated_probability(logit: float, temperature: float) -> float:
    """``sigmoid(logit / temperature)``."""
    return sigmoid(logit / temperature)


def calibrated_probabilities(logits: npt.ArrayLike, temperature: float) -> npt.NDArray[np.float64]:
    """Vectorised :func:`calibrated_probability`: float64, same shape as ``logits``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    out: npt.NDArray[np.float64] = np.exp(-np.logaddexp(0.0, -z))
    return out


def logit_of(probability: float) -> float:
    """The inverse of :func:`sigmoid`, clipped away from 0 and 1."""
    p = min(max(probability, 1e-12), 1.0 - 1e-12)
    return math.log(p / (1.0 - p))


def calibrated_threshold(threshold: float, temperature: float) -> float:
    """The operating threshold on the uncalibrated probability, moved to the calibrated
    scale (the same decision for every logit)."""
    return sigmoid(logit_of(threshold) / temperature)
