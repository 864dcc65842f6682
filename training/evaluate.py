"""Prediction and the metrics the training loop and the manifest need.

``predict`` runs a model over a loader and returns probabilities; ``auroc`` and
``youden_threshold`` are computed per label, ignoring NaN (unknown) labels.
The operating threshold rule, recorded in every manifest entry, is :data:`THRESHOLD_RULE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch.utils.data import DataLoader

from cxrmodel.networks import CXRClassifier

THRESHOLD_RULE = (
    "Youden's J (max sensitivity + specificity - 1) on the patient-level validation split"
)


@dataclass(frozen=True)
class Predictions:
    """``logits``, ``probabilities`` and ``labels``: ``[N, L]`` (labels NaN = unknown);
    ``embeddings``: ``[N, C]``, the pooled features the classifier read (the exported
    graph's ``embedding`` output; the out-of-distribution score's input).

    Rank metrics use the logits: far outside the training distribution a sigmoid in
    float32 saturates to exactly 0 or 1, and ties would hide the model's ranking.
    """

    logits: npt.NDArray[np.float64]
    probabilities: npt.NDArray[np.float64]
    labels: npt.NDArray[np.float32]
    embeddings: npt.NDArray[np.float64]
    loss: float  # mean binary cross-entropy over known labels


@torch.no_grad()
def predict(model: CXRClassifier, loader: DataLoader, device: torch.device) -> Predictions:
    """Logits, probabilities and embeddings for every item of ``loader`` (eval mode)."""
    was_training = model.training
    model.eval()
    logits_all: list[np.ndarray] = []
    embeddings: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    loss_sum, count = 0.0, 0
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        target = batch["label"].to(device)
        logits, _, embedding = model.forward_explained(images)
        logits = logits.float()
        known = ~torch.isnan(target)
        if known.any():
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits[known], target[known], reduction="sum"
            )
            loss_sum += float(loss)
            count += int(known.sum())
        logits_all.append(logits.double().cpu().numpy())
        embeddings.append(embedding.double().cpu().numpy())
        labels.append(target.cpu().numpy())
    model.train(was_training)
    logits_np = np.concatenate(logits_all)
    return Predictions(
        logits=logits_np,
        probabilities=1.0 / (1.0 + np.exp(-logits_np)),
        labels=np.concatenate(labels).astype(np.float32),
        embeddings=np.concatenate(embeddings),
        loss=loss_sum / max(count, 1),
    )


def known_binary(
    labels: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Known cases only, labels binarised at 0.5 (soft labels, e.g. CheXpert's U-random
    policy, train as targets but are scored as the finding present or not)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    known = ~np.isnan(y)
    return (y[known] > 0.5).astype(np.float64), s[known]


def auroc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """AUROC of one label over known cases; NaN when only one class is present."""
    y, s = known_binary(labels, scores)
    if y.size == 0 or np.unique(y).size < 2:
        return math.nan
    return float(roc_auc_score(y, s))


def mean_auroc(predictions: Predictions) -> float:
    """Mean AUROC over the labels that have both classes (NaN when none has)."""
    values = [
        auroc(predictions.labels[:, i], predictions.logits[:, i])
        for i in range(predictions.labels.shape[1])
    ]
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def youden_threshold(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Probability threshold maximising Youden's J on known cases (0.5 when undefined)."""
    y, s = known_binary(labels, scores)
    if y.size == 0 or np.unique(y).size < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, s)
    best = int(np.argmax(tpr - fpr))
    # roc_curve's first threshold is +inf (nothing positive); keep a usable probability.
    return float(min(max(thresholds[best], 0.0), 1.0))


def sensitivity_specificity(
    labels: npt.ArrayLike, scores: npt.ArrayLike, threshold: float
) -> tuple[float, float]:
    """Sensitivity and specificity at ``score >= threshold`` over known cases."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    known = ~np.isnan(y)
    y, positive = y[known] > 0.5, s[known] >= threshold
    sens = float((positive & y).sum() / max(y.sum(), 1))
    spec = float((~positive & ~y).sum() / max((~y).sum(), 1))
    return sens, spec
