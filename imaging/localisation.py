"""Localisation metrics for saliency masks and boxes (used by the resolution study).

Masks are 2-D ``(rows, columns)`` arrays (non-zero = foreground) on the same grid. Boxes
are ``(y_min, x_min, y_max, x_max)`` **inclusive integer pixel indices**, origin top-left,
given as a :class:`imaging.saliency.Box` or any 4-sequence in that order; a box covers
``(y_max - y_min + 1) * (x_max - x_min + 1)`` pixels.

Conventions for empty inputs (documented per function) follow the SIIM-ACR pneumothorax
challenge: two empty masks agree perfectly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from imaging.saliency import Box

BoxLike = Box | Sequence[int]


def _pair(pred: npt.ArrayLike, truth: npt.ArrayLike) -> tuple[Any, Any]:
    p = np.asarray(pred)
    t = np.asarray(truth)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} != ground truth shape {t.shape}")
    if p.ndim != 2:
        raise ValueError(f"masks must be 2-D (rows, columns), got shape {p.shape}")
    return (p if p.dtype == np.bool_ else p != 0), (t if t.dtype == np.bool_ else t != 0)


def mask_iou(pred: npt.ArrayLike, truth: npt.ArrayLike) -> float:
    """Intersection over union of two same-shape masks, in ``[0, 1]``.

    Both empty: ``1.0`` (the prediction agrees exactly with "nothing there", as the
    SIIM-ACR Dice metric scores it). One empty, the other not: ``0.0``.
    """
    p, t = _pair(pred, truth)
    union = int(np.count_nonzero(p | t))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(p & t)) / union


def percent_inside(pred: npt.ArrayLike, truth: npt.ArrayLike) -> float:
    """%-IN: the share of the predicted (saliency) mask's pixels inside the truth, in %.

    Returns a value in ``[0, 100]``. An empty prediction returns ``0.0``: a saliency map
    that marks nothing has put nothing inside the finding, and scoring it 100 would reward
    an uninformative map. An empty truth with a non-empty prediction is also ``0.0``.
    """
    p, t = _pair(pred, truth)
    predicted = int(np.count_nonzero(p))
    if predicted == 0:
        return 0.0
    return 100.0 * int(np.count_nonzero(p & t)) / predicted


def _yxyx(box: BoxLike) -> tuple[int, int, int, int]:
    if isinstance(box, Box):
        y0, x0, y1, x1 = box.y_min, box.x_min, box.y_max, box.x_max
    else:
        if len(box) != 4:
            raise ValueError(f"a box needs 4 values (y_min, x_min, y_max, x_max), got {box}")
        y0, x0, y1, x1 = (int(v) for v in box)
    if y1 < y0 or x1 < x0:
        raise ValueError(f"box has max < min: {(y0, x0, y1, x1)}")
    return y0, x0, y1, x1


def box_iou(a: BoxLike, b: BoxLike) -> float:
    """IoU of two inclusive-index boxes, in ``[0, 1]`` (pixel counts, so touching = 0)."""
    ay0, ax0, ay1, ax1 = _yxyx(a)
    by0, bx0, by1, bx1 = _yxyx(b)
    inter_h = min(ay1, by1) - max(ay0, by0) + 1
    inter_w = min(ax1, bx1) - max(ax0, bx0) + 1
    inter = max(0, inter_h) * max(0, inter_w)
    area_a = (ay1 - ay0 + 1) * (ax1 - ax0 + 1)
    area_b = (by1 - by0 + 1) * (bx1 - bx0 + 1)
    return inter / (area_a + area_b - inter)


@dataclass(frozen=True, slots=True)
class BoxMatch:
    """Counts from :func:`match_boxes`.

    ``precision`` = TP / (TP + FP), ``recall`` = TP / (TP + FN); each is ``None`` when
    its denominator is 0 (no predictions / no ground truth), so callers choose how an
    image without boxes enters an average instead of this function guessing.
    ``matches`` lists ``(pred_index, truth_index, iou)`` of the true positives, indices
    into the caller's sequences.
    """

    tp: int
    fp: int
    fn: int
    matches: tuple[tuple[int, int, float], ...]

    @property
    def precision(self) -> float | None:
        """TP / (TP + FP), ``None`` without predictions."""
        n = self.tp + self.fp
        return None if n == 0 else self.tp / n

    @property
    def recall(self) -> float | None:
        """TP / (TP + FN), ``None`` without ground-truth boxes."""
        n = self.tp + self.fn
        return None if n == 0 else self.tp / n


def match_boxes(
    pred_boxes: Sequence[BoxLike],
    truth_boxes: Sequence[BoxLike],
    iou_threshold: float = 0.1,
    scores: Sequence[float] | None = None,
) -> BoxMatch:
    """Match predicted to ground-truth boxes, at most one true positive per truth box.

    Following Wollek et al.'s localisation protocol: a predicted box is a true positive
    when its IoU with a not-yet-matched ground-truth box is ``>= iou_threshold`` (0.1 by
    default, the loose criterion suited to coarse saliency). Predictions are visited by
    score, highest first (``scores`` if given, else each :class:`Box`'s ``score``, else
    the given order), and each takes the unmatched truth box of highest IoU; a second
    prediction on an already-matched finding is a false positive. Unmatched truth boxes
    are false negatives. Ties keep the input order (stable sort).
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    preds = [_yxyx(b) for b in pred_boxes]
    truths = [_yxyx(b) for b in truth_boxes]
    if scores is None:
        scores = [b.score if isinstance(b, Box) else 0.0 for b in pred_boxes]
    if len(scores) != len(preds):
        raise ValueError(f"{len(scores)} scores for {len(preds)} predicted boxes")
    order = sorted(range(len(preds)), key=lambda i: -float(scores[i]))
    matched: set[int] = set()
    matches: list[tuple[int, int, float]] = []
    for i in order:
        best_j, best_iou = -1, -1.0
        for j, truth in enumerate(truths):
            if j in matched:
                continue
            iou = box_iou(preds[i], truth)
            if iou > best_iou:
                best_j, best_iou = j, iou
        # IoU 0 never matches, even with a threshold of 0: no overlap is no localisation.
        if best_j >= 0 and best_iou >= iou_threshold and best_iou > 0.0:
            matched.add(best_j)
            matches.append((i, best_j, best_iou))
    tp = len(matches)
    return BoxMatch(tp=tp, fp=len(preds) - tp, fn=len(truths) - tp, matches=tuple(matches))
