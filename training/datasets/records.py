"""One training image (:class:`Record`), label vocabularies, record -> display pixels, and
record -> localisation mask on the model grid.

Every loader (SIIM, phantoms, NIH, CheXpert) returns a list of :class:`Record`; the torch
side (:mod:`training.datasets.torch_dataset`) turns a record into the model input through
:func:`read_display_pixels` and :func:`imaging.preprocess.preprocess`, the very functions the
service uses, so train and serve preprocessing cannot drift.

Patient identifiers: ``Record.patient_id`` exists only to keep patients out of both sides of a
split. It is never logged and never put into an exception message; warnings name the
``image_id`` (the dataset's own public image name) only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from imaging.dicom import read_dicom
from imaging.geometry import LetterboxGeometry
from imaging.raster import RasterDecodeError, read_raster
from imaging.rle import decode_siim_rle

logger = logging.getLogger(__name__)

#: the label a single-output model predicts
PNEUMOTHORAX = "Pneumothorax"

#: the 14 ChestX-ray14 findings in the order of the NIH release (Wang et al. 2017, README)
NIH_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

#: suffixes read as 8/16-bit grayscale rasters (NIH PNG, CheXpert JPEG); anything else is
#: read as DICOM
RASTER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})

Box = tuple[float, float, float, float]


@dataclass(frozen=True, eq=False)
class Record:
    """One image of a dataset.

    ``labels``: float32 ``[L]``, 1 = present, 0 = absent, NaN = unknown (masked out of the
    loss); soft values in ``(0, 1)`` only from CheXpert's ``uncertain="random"`` policy.
    ``patient_id``: for patient-level splits only (never logged); ``None`` = unknown, the
    image is then its own patient. ``mask_rle``: every SIIM relative-RLE row of the image in
    its ``rows x columns`` grid (the mask is their union), ``-1`` rows dropped.
    ``boxes``: ``(y_min, x_min, y_max, x_max)`` edge-based boxes in original pixels (NIH).
    ``site``: acquisition site (phantoms ``a``/``b``), ``None`` when unknown.
    """

    image_id: str
    path: Path
    labels: npt.NDArray[np.float32]
    patient_id: str | None
    mask_rle: tuple[str, ...] = ()
    boxes: tuple[Box, ...] = ()
    site: str | None = None

    # Labels are an array, so the generated __eq__ would compare element-wise: written out.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (
            self.image_id == other.image_id
            and self.path == other.path
            and self.patient_id == other.patient_id
            and self.mask_rle == other.mask_rle
            and self.boxes == other.boxes
            and self.site == other.site
            and np.array_equal(self.labels, other.labels, equal_nan=True)
        )

    def __hash__(self) -> int:
        return hash((self.image_id, str(self.path)))


def label_vector(names: tuple[str, ...] | list[str], present: set[str]) -> npt.NDArray[np.float32]:
    """float32 ``[len(names)]``: 1 where the name is in ``present``, else 0."""
    return np.array([1.0 if n in present else 0.0 for n in names], dtype=np.float32)


# ------------------------------------------------------------------------ pixels
def read_display_pixels(path: Path) -> npt.NDArray[np.float32]:
    """The display pixels of ``path``: float32 ``(rows, columns)`` in ``[0, 1]``.

    DICOM goes through ``imaging.read_dicom``, PNG/JPEG through ``imaging.read_raster``;
    raises ``ImagingError`` (files the service would refuse are refused here too).
    """
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return read_raster(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RasterDecodeError(f"image file unreadable: {exc.strerror}") from None
    return read_dicom(data).pixels


# ------------------------------------------------------------------------ masks
def record_mask(record: Record, geometry: LetterboxGeometry) -> npt.NDArray[np.bool_]:
    """bool ``(R, R)``: the record's localisation on the model grid, all False if none.

    RLE rows: their union in the original grid, then ``geometry.mask_to_model`` (area
    fraction >= 0.5). Boxes (edge-based, original pixels): mapped with
    ``geometry.box_to_model``; a model pixel is in when its centre is, and a box always
    marks at least the pixel holding its centre (small boxes survive low resolutions).
    """
    R = geometry.resolution
    out = np.zeros((R, R), dtype=bool)
    if record.mask_rle:
        union = np.zeros((geometry.rows, geometry.columns), dtype=bool)
        for rle in record.mask_rle:
            try:
                union |= decode_siim_rle(rle, geometry.rows, geometry.columns)
            except ValueError as exc:
                raise ValueError(f"image {record.image_id}: bad RLE row: {exc}") from None
        out |= geometry.mask_to_model(union)
    for box in record.boxes:
        y0, x0, y1, x1 = geometry.box_to_model(np.asarray(box, dtype=np.float64)).tolist()
        r0, r1 = max(0, int(np.ceil(y0 - 0.5))), min(R, int(np.ceil(y1 - 0.5)))
        c0, c1 = max(0, int(np.ceil(x0 - 0.5))), min(R, int(np.ceil(x1 - 0.5)))
        out[r0:r1, c0:c1] = True
        cy = min(R - 1, max(0, int((y0 + y1) / 2)))
        cx = min(R - 1, max(0, int((x0 + x1) / 2)))
        out[cy, cx] = True
    return out


def content_mask(geometry: LetterboxGeometry) -> npt.NDArray[np.bool_]:
    """bool ``(R, R)``: True over the image, False over the letterbox padding."""
    out = np.zeros((geometry.resolution, geometry.resolution), dtype=bool)
    out[geometry.offset_y : geometry.offset_y + geometry.content_rows,
        geometry.offset_x : geometry.offset_x + geometry.content_columns] = True  # fmt: skip
    return out


__all__ = [
    "NIH_LABELS",
    "PNEUMOTHORAX",
    "Box",
    "RasterDecodeError",
    "Record",
    "content_mask",
    "label_vector",
    "read_display_pixels",
    "read_raster",
    "record_mask",
]
