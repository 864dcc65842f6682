"""Per-case evaluation of one resolution's models: logits, Grad-CAMs and localisation.

``infer`` runs a model over records and returns the raw pneumothorax logit and raw Grad-CAM
of every case (the in-graph closed form the service's ONNX models compute, so the study
scores exactly what the product serves). ``localise`` turns a CAM into the service's
saliency mask and boxes (``imaging.saliency.explain``: normalise, resample to the original
grid, threshold, connected components) and scores them against the ground-truth mask with
``imaging.localisation``: IoU, %-IN and box matches at IoU >= 0.1. Scores live in the
**original** pixel grid, so every resolution is judged against the same ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader

from imaging.localisation import mask_iou, match_boxes, percent_inside
from imaging.rle import decode_siim_rle
from imaging.saliency import explain, mask_to_boxes, normalise_cam
from training.datasets import CXRDataset, PreprocessCache, Record


@dataclass(frozen=True)
class Inference:
    """``logits`` float64 ``[N]``, ``labels`` float32 ``[N]`` (1/0), ``cams`` float32
    ``[N, G, G]`` raw (unnormalised, ``G = R / 32``), in the order of the records."""

    logits: npt.NDArray[np.float64]
    labels: npt.NDArray[np.float32]
    cams: npt.NDArray[np.float32]


@dataclass(frozen=True)
class Localisation:
    """Per positive case with a ground-truth mask, in the order of ``case_index``.

    ``iou`` and ``percent_in`` (0..100) of the thresholded saliency mask against the truth;
    ``tp``/``fp``/``fn`` box matches (one true positive per ground-truth box at most).
    """

    case_index: npt.NDArray[np.int64]
    iou: npt.NDArray[np.float64]
    percent_in: npt.NDArray[np.float64]
    tp: npt.NDArray[np.int64]
    fp: npt.NDArray[np.int64]
    fn: npt.NDArray[np.int64]


@torch.no_grad()
def infer(
    model: torch.nn.Module,
    records: Sequence[Record],
    resolution: int,
    cache: PreprocessCache,
    device: torch.device,
    batch_size: int = 16,
) -> Inference:
    """Logit and raw Grad-CAM of the first label for every record (model in eval mode)."""
    model.eval()
    loader = DataLoader(CXRDataset(records, resolution, cache=cache), batch_size=batch_size)
    logits, labels, cams = [], [], []
    for batch in loader:
        logit, cam, _ = model.forward_explained(batch["image"].to(device))  # type: ignore[operator]
        logits.append(logit[:, 0].double().cpu().numpy())
        cams.append(cam.float().cpu().numpy())
        labels.append(batch["label"][:, 0].numpy())
    return Inference(logits=np.concatenate(logits), labels=np.concatenate(labels),
                     cams=np.concatenate(cams))  # fmt: skip


def ensemble(inferences: Sequence[Inference]) -> Inference:
    """The k-fold ensemble: mean logit, mean of the folds' **normalised** CAMs.

    Each fold's CAM is min-max normalised first (their raw scales differ), as
    ``imaging.saliency.normalise_cam`` would before display.
    """
    first = inferences[0]
    return Inference(
        logits=np.mean([i.logits for i in inferences], axis=0),
        labels=first.labels,
        cams=np.mean([normalise_cam(i.cams) for i in inferences], axis=0).astype(np.float32),
    )


def truth_mask(record: Record, rows: int, columns: int) -> npt.NDArray[np.bool_]:
    """The union of the record's RLE rows, bool ``(rows, columns)`` in the original grid."""
    mask = np.zeros((rows, columns), dtype=bool)
    for rle in record.mask_rle:
        mask |= decode_siim_rle(rle, rows, columns)
    return mask


def localise(
    records: Sequence[Record],
    cams: npt.NDArray[np.float32],
    resolution: int,
    cache: PreprocessCache,
    threshold: float = 0.5,
    box_iou_threshold: float = 0.1,
) -> Localisation:
    """Score the saliency of every record that has a ground-truth mask (positives)."""
    rows_out: list[tuple[int, float, float, int, int, int]] = []
    for i, record in enumerate(records):
        if not record.mask_rle:
            continue
        geometry = cache.get(record, resolution).geometry
        truth = truth_mask(record, geometry.rows, geometry.columns)
        if not truth.any():
            continue
        saliency = explain(cams[i], geometry, threshold)
        match = match_boxes(saliency.boxes, mask_to_boxes(truth), box_iou_threshold)
        rows_out.append((i, mask_iou(saliency.mask, truth), percent_inside(saliency.mask, truth),
                         match.tp, match.fp, match.fn))  # fmt: skip
    columns: list[tuple[Any, ...]] = list(zip(*rows_out, strict=True)) if rows_out else [()] * 6
    return Localisation(
        case_index=np.asarray(columns[0], dtype=np.int64),
        iou=np.asarray(columns[1], dtype=np.float64),
        percent_in=np.asarray(columns[2], dtype=np.float64),
        tp=np.asarray(columns[3], dtype=np.int64),
        fp=np.asarray(columns[4], dtype=np.int64),
        fn=np.asarray(columns[5], dtype=np.int64),
    )
