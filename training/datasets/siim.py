"""SIIM-ACR Pneumothorax (DICOM + ``train-rle.csv``) and the synthetic phantoms (same layout).

``train-rle.csv``: header ``ImageId,EncodedPixels`` (the real file writes ``ImageId,
EncodedPixels`` with a leading space, and a space before every value: both are stripped);
one row per pneumothorax region, so an image with several regions has several rows and its
mask is their union; ``-1`` = no pneumothorax. RLE is SIIM's *relative* column-major format
(:func:`imaging.rle.decode_siim_rle`). The stage-2 release switched to absolute RLE: convert
that file first, it is not read here.

DICOMs are found by ``<ImageId>.dcm`` anywhere under ``root`` (``root/dicom/`` first, then
the rest: the real release nests ``dicom-images-train/<study>/<series>/<ImageId>.dcm``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom

from training.datasets.records import PNEUMOTHORAX, Record

logger = logging.getLogger(__name__)

_EMPTY = "-1"


def index_dicoms(root: Path) -> dict[str, Path]:
    """``ImageId -> path`` for every ``<ImageId>.dcm`` under ``root``.

    ``os.walk`` (fast on 10^5 files), sorted for determinism; on duplicates a file under
    ``root/dicom`` wins, else the first in sorted order.
    """
    preferred = (root / "dicom").resolve()
    index: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        in_preferred = here.resolve().is_relative_to(preferred)
        for name in sorted(filenames):
            if not name.lower().endswith(".dcm"):
                continue
            image_id = name[: -len(".dcm")]
            old = index.get(image_id)
            if old is None or (in_preferred and not old.resolve().is_relative_to(preferred)):
                index[image_id] = here / name
    return index


def read_rle_csv(csv_path: Path) -> dict[str, list[str]]:
    """``ImageId -> [RLE, ...]`` in file order; ``-1`` rows give an empty list.

    Tolerates the real file's leading spaces (header and values) and a BOM.
    """
    rows: dict[str, list[str]] = {}
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        try:
            id_col, rle_col = header.index("ImageId"), header.index("EncodedPixels")
        except ValueError:
            raise ValueError(
                f"{csv_path.name}: expected columns ImageId and EncodedPixels, got {header}"
            ) from None
        for line in reader:
            if not line or not "".join(line).strip():
                continue
            image_id, rle = line[id_col].strip(), line[rle_col].strip()
            runs = rows.setdefault(image_id, [])
            if rle and rle != _EMPTY:
                runs.append(rle)
    return rows


def _patient_id(path: Path) -> str | None:
    """PatientID from the header (pixels not read); None when absent or unreadable."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception:  # pydicom raises many types; the image itself is checked later
        return None
    value = str(ds.get("PatientID", "") or "").strip()
    return value or None


def load_siim(root: Path) -> list[Record]:
    """Records of a SIIM-ACR-layout folder (module docstring), in CSV order.

    ``labels`` = ``[Pneumothorax]`` (1 when any row of the image is not ``-1``);
    ``mask_rle`` = every non-empty row; ``patient_id`` from the DICOM PatientID (never
    logged). CSV images without a DICOM, and DICOMs without a CSV row, are skipped and
    counted in one warning (image ids of the former logged at debug level).
    """
    root = Path(root)
    csv_path = root / "train-rle.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"no train-rle.csv in {root}")
    rle_rows = read_rle_csv(csv_path)
    files = index_dicoms(root)
    records: list[Record] = []
    missing = 0
    for image_id, runs in rle_rows.items():
        path = files.get(image_id)
        if path is None:
            missing += 1
            logger.debug("SIIM image %s: no DICOM file, skipped", image_id)
            continue
        label = np.array([1.0 if runs else 0.0], dtype=np.float32)
        records.append(
            Record(
                image_id=image_id,
                path=path,
                labels=label,
                patient_id=_patient_id(path),
                mask_rle=tuple(runs),
            )
        )
    unlabelled = len(set(files) - set(rle_rows))
    if missing or unlabelled:
        logger.warning(
            "SIIM %s: %d CSV images without a DICOM skipped, %d DICOMs without a CSV row ignored",
            root.name,
            missing,
            unlabelled,
        )
    logger.info(
        "SIIM %s: %d images, %d positive",
        root.name,
        len(records),
        sum(int(r.labels[0] == 1) for r in records),
    )
    return records


def load_phantoms(root: Path) -> list[Record]:
    """:func:`load_siim` on a phantom folder, plus ``site`` from ``phantoms.json``."""
    root = Path(root)
    records = load_siim(root)
    manifest_path = root / "phantoms.json"
    if not manifest_path.is_file():
        logger.warning("phantoms %s: no phantoms.json, site unknown", root.name)
        return records
    manifest = json.loads(manifest_path.read_text())
    default_site = manifest.get("parameters", {}).get("site")
    sites = {str(m["image_id"]): m.get("site", default_site) for m in manifest.get("images", [])}
    out = []
    for r in records:
        site = sites.get(r.image_id, default_site)
        out.append(replace(r, site=None if site is None else str(site)))
    return out


__all__ = ["PNEUMOTHORAX", "index_dicoms", "load_phantoms", "load_siim", "read_rle_csv"]
