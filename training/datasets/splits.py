"""Patient-level splits: hold-out and k-fold, stratified by label where possible.

No patient is ever on both sides (images of one patient are correlated: a split by image
would leak). A record without ``patient_id`` is its own patient.

Stratification: each patient gets one stratum, "negative" or the index of its rarest
positive label (prevalence counted over patients; for one label simply positive/negative,
positive meaning any of its images is >= 0.5; NaN labels count as not positive). Patients are
assigned stratum by stratum, so each side gets close to its share of every stratum. Sizes
are balanced in images, not patients, because patients have very different image counts
(NIH: 1 to 184).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from training.datasets.records import Record

_NEGATIVE = -1


def _groups(records: Sequence[Record]) -> dict[str, list[int]]:
    """Patient key -> record indices, in first-seen order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        key = f"p:{r.patient_id}" if r.patient_id is not None else f"i:{r.image_id}:{i}"
        groups[key].append(i)
    return dict(groups)


def _strata(records: Sequence[Record], groups: dict[str, list[int]]) -> dict[str, int]:
    """Patient key -> stratum (rarest positive label index, or -1 = negative)."""
    positive: dict[str, np.ndarray] = {}
    for key, idx in groups.items():
        labels = np.stack([np.nan_to_num(records[i].labels, nan=0.0) for i in idx])
        positive[key] = np.asarray((labels >= 0.5).any(axis=0))
    if not positive:
        return {}
    prevalence = np.sum(list(positive.values()), axis=0)
    out = {}
    for key, pos in positive.items():
        if not pos.any():
            out[key] = _NEGATIVE
        else:
            candidates = np.flatnonzero(pos)
            out[key] = int(candidates[np.argmin(prevalence[candidates])])
    return out


def _shuffled_by_stratum(
    records: Sequence[Record], seed: int
) -> tuple[dict[str, list[int]], dict[int, list[str]]]:
    groups = _groups(records)
    strata = _strata(records, groups)
    rng = np.random.default_rng(seed)
    by_stratum: dict[int, list[str]] = defaultdict(list)
    for key in groups:
        by_stratum[strata[key]].append(key)
    for s in sorted(by_stratum):
        order = rng.permutation(len(by_stratum[s]))
        by_stratum[s] = [by_stratum[s][j] for j in order]
    return groups, dict(sorted(by_stratum.items()))


def patient_holdout_split(
    records: Sequence[Record], fraction: float = 0.1, seed: int = 0
) -> tuple[list[Record], list[Record]]:
    """``(train, holdout)`` with about ``fraction`` of the images (of every stratum) held out.

    Per stratum, shuffled patients join the hold-out while that brings its image count
    closer to ``fraction`` of the stratum's images. Both lists keep the input order.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    groups, by_stratum = _shuffled_by_stratum(records, seed)
    held: set[int] = set()
    for keys in by_stratum.values():
        target = fraction * sum(len(groups[k]) for k in keys)
        count = 0
        for key in keys:
            size = len(groups[key])
            if abs(count + size - target) < abs(count - target):
                held.update(groups[key])
                count += size
    if not held and fraction > 0 and len(groups) >= 2:
        # Tiny data: every stratum rounded down to nothing; hold out one patient anyway,
        # the smallest of the largest stratum, so validation is never empty.
        keys = max(by_stratum.values(), key=len)
        held.update(groups[min(keys, key=lambda key: len(groups[key]))])
    train = [r for i, r in enumerate(records) if i not in held]
    holdout = [r for i, r in enumerate(records) if i in held]
    return train, holdout


def patient_kfold_assignment(records: Sequence[Record], k: int = 5, seed: int = 0) -> list[int]:
    """The fold (``0..k-1``) of every record; see :func:`patient_kfold`."""
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    groups, by_stratum = _shuffled_by_stratum(records, seed)
    if len(groups) < k:
        raise ValueError(f"{len(groups)} patients cannot fill {k} folds")
    fold_of = [0] * len(records)
    totals = np.zeros(k, dtype=np.int64)
    for keys in by_stratum.values():
        in_stratum = np.zeros(k, dtype=np.int64)
        # Largest patients first (stable after the shuffle), each to the fold that has the
        # fewest images of this stratum, then fewest overall: greedy bin balancing.
        for key in sorted(keys, key=lambda key: -len(groups[key])):
            fold = min(range(k), key=lambda f: (in_stratum[f], totals[f], f))
            for i in groups[key]:
                fold_of[i] = fold
            in_stratum[fold] += len(groups[key])
            totals[fold] += len(groups[key])
    return fold_of


def patient_kfold(
    records: Sequence[Record], k: int = 5, seed: int = 0
) -> list[tuple[list[Record], list[Record]]]:
    """``k`` ``(train, validation)`` pairs; the validation sets partition ``records``.

    Patients never cross folds; every stratum is spread evenly (greedy, in images).
    """
    fold_of = patient_kfold_assignment(records, k, seed)
    out = []
    for f in range(k):
        train = [r for r, g in zip(records, fold_of, strict=True) if g != f]
        val = [r for r, g in zip(records, fold_of, strict=True) if g == f]
        out.append((train, val))
    return out


__all__ = ["patient_holdout_split", "patient_kfold", "patient_kfold_assignment"]
