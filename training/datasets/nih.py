"""NIH ChestX-ray14: PNG images + ``Data_Entry_2017.csv`` + ``BBox_List_2017.csv``.

Layout (the NIH box release and the Kaggle mirror both work)::

    root/Data_Entry_2017.csv    Image Index, Finding Labels ("A|B" or "No Finding"),
                                Follow-up #, Patient ID, Patient Age, Patient Gender, ...
    root/BBox_List_2017.csv     Image Index, Finding Label, Bbox [x, y, w, h]  (optional)
    root/images*/**/<Image Index>.png

Bounding boxes are in the pixels of the released 1024 x 1024 PNG, ``x, y`` = top-left
corner, ``w, h`` = size; they become edge-based ``(y, x, y + h, x + w)``. pandas reads
that header as columns ``Bbox [x``, ``y``, ``w``, ``h]`` (the header's commas split it),
which is how it is parsed here: the four columns from ``Bbox [x`` on.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from training.datasets.records import NIH_LABELS, PNEUMOTHORAX, Box, Record, label_vector

logger = logging.getLogger(__name__)

NO_FINDING = "No Finding"
# Spellings seen in NIH derivatives, mapped onto the release's vocabulary.
_ALIASES = {"Pleural Thickening": "Pleural_Thickening", "Pleural_thickening": "Pleural_Thickening"}


def nih_label_names(labels: str) -> tuple[str, ...]:
    """``("Pneumothorax",)`` for ``"pneumothorax"``, :data:`NIH_LABELS` for ``"all"``."""
    if labels == "pneumothorax":
        return (PNEUMOTHORAX,)
    if labels == "all":
        return NIH_LABELS
    raise ValueError(f"labels must be 'pneumothorax' or 'all', not {labels!r}")


def _index_pngs(root: Path) -> dict[str, Path]:
    """``file name -> path`` of every PNG under ``root/images*`` (sorted, first wins)."""
    index: dict[str, Path] = {}
    tops = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("images"))
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                if name.lower().endswith(".png"):
                    index.setdefault(name, Path(dirpath) / name)
    return index


def _column(header: Sequence[str], name: str) -> int:
    cleaned = [h.strip() for h in header]
    if name not in cleaned:
        raise ValueError(f"missing column {name!r}; got {cleaned}")
    return cleaned.index(name)


def read_bboxes(csv_path: Path) -> dict[str, list[tuple[str, Box]]]:
    """``Image Index -> [(finding, (y_min, x_min, y_max, x_max)), ...]`` from the box CSV."""
    out: dict[str, list[tuple[str, Box]]] = {}
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        image_col = _column(header, "Image Index")
        label_col = _column(header, "Finding Label")
        starts = [i for i, h in enumerate(header) if h.strip().replace(" ", "").startswith("Bbox[")]
        if not starts:
            raise ValueError(f"{csv_path.name}: no 'Bbox [x' column in {header}")
        bx = starts[0]
        for line in reader:
            if len(line) < bx + 4 or not line[image_col].strip():
                continue
            x, y, w, h = (float(v) for v in line[bx : bx + 4])
            label = line[label_col].strip()
            label = _ALIASES.get(label, label)
            out.setdefault(line[image_col].strip(), []).append((label, (y, x, y + h, x + w)))
    return out


def load_nih(root: Path, labels: str = "pneumothorax") -> list[Record]:
    """Records of ChestX-ray14 under ``root`` (module docstring), in CSV order.

    ``labels="pneumothorax"``: ``[Pneumothorax]``; ``"all"``: the 14 :data:`NIH_LABELS`.
    ``Finding Labels`` is split on ``|``; ``No Finding`` = all zeros; unknown names are
    ignored (counted in a warning). ``boxes``: the image's boxes for the selected labels
    only (so a pneumothorax model is never shown a nodule box as its target).
    ``patient_id``: the ``Patient ID`` column. Rows whose PNG is missing are skipped.
    """
    root = Path(root)
    names = nih_label_names(labels)
    selected = set(names)
    entry_path = root / "Data_Entry_2017.csv"
    if not entry_path.is_file():
        raise FileNotFoundError(f"no Data_Entry_2017.csv in {root}")
    bbox_path = root / "BBox_List_2017.csv"
    boxes = read_bboxes(bbox_path) if bbox_path.is_file() else {}
    files = _index_pngs(root)
    records: list[Record] = []
    missing = 0
    unknown: set[str] = set()
    with entry_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        image_col = _column(header, "Image Index")
        finding_col = _column(header, "Finding Labels")
        patient_col = _column(header, "Patient ID")
        for line in reader:
            if len(line) <= max(image_col, finding_col, patient_col):
                continue
            image_id = line[image_col].strip()
            path = files.get(image_id)
            if path is None:
                missing += 1
                continue
            findings = {_ALIASES.get(f.strip(), f.strip()) for f in line[finding_col].split("|")}
            findings.discard("")
            findings.discard(NO_FINDING)
            unknown |= findings - set(NIH_LABELS)
            image_boxes = tuple(b for lab, b in boxes.get(image_id, []) if lab in selected)
            patient = line[patient_col].strip()
            records.append(
                Record(
                    image_id=image_id,
                    path=path,
                    labels=label_vector(names, findings),
                    patient_id=patient or None,
                    boxes=image_boxes,
                )
            )
    if missing:
        logger.warning("NIH %s: %d rows without a PNG file skipped", root.name, missing)
    if unknown:
        logger.warning("NIH %s: unknown finding names ignored: %s", root.name, sorted(unknown))
    logger.info("NIH %s: %d images, labels=%s", root.name, len(records), labels)
    return records


__all__ = ["NIH_LABELS", "NO_FINDING", "load_nih", "nih_label_names", "read_bboxes"]
