"""Read sharpcxr's DICOM result objects back (test-only): SEG mask, SR findings, GSPS boxes
and text, and dciodvfy's errors. Work on objects straight from ``build_results`` and on
ones fetched back from a PACS (any transfer syntax the PACS chose).

Coordinates: masks are ``(rows, columns)`` arrays on the source grid; boxes are inclusive
``(x_min, y_min, x_max, y_max)`` pixel indices (x = column, y = row, origin top left),
inverted from the DICOM SCOORD rectangles ``[x_min, x_max + 1) x [y_min, y_max + 1)``.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from service.pacs.results_sr import (
    DECISION_CODES,
    NOT_ASSESSABLE_REASON,
    OOD_SCORE,
    OOD_THRESHOLD,
    box_from_scoord,
)

Box = tuple[int, int, int, int]


def _dataset(ds_or_bytes: pydicom.Dataset | bytes) -> pydicom.Dataset:
    if isinstance(ds_or_bytes, bytes | bytearray):
        return pydicom.dcmread(io.BytesIO(ds_or_bytes))
    return ds_or_bytes


def _roundtrip(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` as a receiver sees it: written to Part 10 bytes and read again."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def seg_mask(ds: pydicom.Dataset | bytes) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """The SEG's segment 1 as a bool ``(rows, columns)`` mask on the source grid.

    With highdicom when it can parse the SEG; highdicom 0.28's reader insists on Slice
    Thickness in the Pixel Measures Sequence, which a projection radiograph's SEG has
    no reason to carry (Type 1C, for volumes), so then from the frames directly.
    """
    data = _roundtrip(_dataset(ds))
    try:
        seg = hd.seg.Segmentation.from_dataset(data)
    except AttributeError:
        return _frames_mask(data)
    (source_uid,) = [uid for _, _, uid in seg.get_source_image_uids()]
    pixels = seg.get_pixels_by_source_instance(
        [source_uid], segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    return np.asarray(pixels[0, :, :, 0] > 0)


def _frames_mask(seg: pydicom.Dataset) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Union of the frames of segment 1 (single-frame source: all frames are on its grid)."""
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    frames = np.asarray(seg.pixel_array).reshape(-1, seg.Rows, seg.Columns)
    shared = seg.SharedFunctionalGroupsSequence[0]
    mask = np.zeros((seg.Rows, seg.Columns), dtype=bool)
    for frame, groups in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        ident = groups.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        if int(ident[0].ReferencedSegmentNumber) == 1:
            mask |= frame > 0
    return mask


def _value(item: Any) -> Any:
    return item.value


def sr_findings(ds: pydicom.Dataset | bytes) -> dict[str, Any]:
    """The SR's content: ``probability``, ``threshold``, ``decision`` (positive /
    negative / not_assessable), ``reasons`` (``code: message`` texts), ``ood_score``,
    ``ood_threshold``, ``boxes`` (inclusive ints, response order), ``box_scores``,
    ``box_areas`` (value, unit code) and ``referenced_sop_instance_uids`` (of the regions
    and the image-level group)."""
    sr = hd.sr.ComprehensiveSR.from_dataset(_roundtrip(_dataset(ds)))
    report = hd.sr.MeasurementReport.from_sequence(sr.content)
    (image_group,) = report.get_image_measurement_groups()

    def number(name: Any) -> float:
        (m,) = image_group.get_measurements(name=name)
        return float(m.value)

    (evaluation,) = image_group.get_qualitative_evaluations(name=codes.SCT.Pneumothorax)
    decisions = {v.value: k for k, v in DECISION_CODES.items()}
    reasons = [
        str(item.TextValue)
        for item in image_group[0].ContentSequence
        if item.ValueType == "TEXT"
        and item.ConceptNameCodeSequence[0].CodeValue == NOT_ASSESSABLE_REASON.value
    ]
    referenced = {
        src.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for src in image_group.source_images
    }
    boxes, scores, areas = [], [], []
    groups = sorted(
        report.get_planar_roi_measurement_groups(),
        key=lambda g: int(str(g.tracking_identifier).split()[-1]),
    )
    for group in groups:
        roi = group.roi
        assert roi is not None and roi.GraphicType == "POLYLINE"
        boxes.append(box_from_scoord(roi.value))
        referenced.add(roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        (saliency,) = group.get_measurements(name=codes.DCM.Saliency)
        scores.append(float(saliency.value))
        (area,) = group.get_measurements(name=codes.SCT.Area)
        areas.append((float(area.value), area.unit.value))
    return {
        "probability": number(codes.DCM.Probability),
        "threshold": number(codes.DCM.ThresholdValue),
        "decision": decisions[evaluation.value.value],
        "reasons": reasons,
        "ood_score": number(OOD_SCORE),
        "ood_threshold": number(OOD_THRESHOLD),
        "boxes": boxes,
        "box_scores": scores,
        "box_areas": areas,
        "referenced_sop_instance_uids": referenced,
    }


def gsps_boxes(ds: pydicom.Dataset | bytes) -> list[Box]:
    """The GSPS's POLYLINE graphic objects as inclusive boxes, in order."""
    gsps = _dataset(ds)
    out: list[Box] = []
    for annotation in gsps.get("GraphicAnnotationSequence", []):
        for obj in annotation.get("GraphicObjectSequence", []):
            assert obj.GraphicType == "POLYLINE" and obj.GraphicAnnotationUnits == "PIXEL"
            out.append(box_from_scoord([float(v) for v in obj.GraphicData]))
    return out


def gsps_text(ds: pydicom.Dataset | bytes) -> str:
    """The GSPS's text objects, joined by newlines."""
    gsps = _dataset(ds)
    return "\n".join(
        str(obj.UnformattedTextValue)
        for annotation in gsps.get("GraphicAnnotationSequence", [])
        for obj in annotation.get("TextObjectSequence", [])
    )


def dciodvfy_path() -> str:
    """dciodvfy (dicom3tools): on PATH or next to this interpreter (the venv's bin)."""
    found = shutil.which("dciodvfy") or shutil.which(
        "dciodvfy", path=str(Path(sys.executable).parent)
    )
    if found is None:
        raise FileNotFoundError("dciodvfy (dicom3tools) not found")
    return found


def dciodvfy_errors(ds_or_path: pydicom.Dataset | bytes | str | Path) -> list[str]:
    """The ``Error`` lines dciodvfy prints (to stderr) for a dataset, bytes or file."""
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(ds_or_path, str | Path):
            path = Path(ds_or_path)
        else:
            path = Path(tmp) / "object.dcm"
            if isinstance(ds_or_path, bytes | bytearray):
                path.write_bytes(ds_or_path)
            else:
                ds_or_path.save_as(path, enforce_file_format=True)
        done = subprocess.run(
            [dciodvfy_path(), str(path)], capture_output=True, text=True, timeout=120
        )
    lines = (done.stderr + done.stdout).splitlines()
    return [line.strip() for line in lines if line.strip().startswith("Error")]


#: dciodvfy errors that stem from the source itself and are copied, not made, by the
#: result objects (highdicom copies the Patient module verbatim, as it must): the SIIM
#: files' Patient's Age "62" is not a valid AS ("062Y"); the second line is dciodvfy's
#: summary of it. Filtered only when dciodvfy reports the same line for the source.
SOURCE_ERRORS = (
    "Error - Value invalid for this VR - (0x0010,0x1010) AS Patient's Age",
    "Error - Dicom dataset contains invalid data values for Value Representations",
)


def errors_not_from_source(obj: pydicom.Dataset, source_errors: list[str]) -> list[str]:
    return [
        line
        for line in dciodvfy_errors(obj)
        if not (line in source_errors and line.startswith(SOURCE_ERRORS))
    ]
