"""DICOM AI result objects (SEG, SR, GSPS) for one prediction, built with highdicom.

From a source instance (the DICOM the service answered) and its
:class:`~service.schemas.PredictResponse`, :func:`build_results` makes:

* **SEG** (:class:`highdicom.seg.Segmentation`, BINARY, one frame, one segment
  "Pneumothorax saliency", Morphologically abnormal structure / Pneumothorax, AUTOMATIC,
  algorithm = the model): the saliency mask on the source's pixel grid, pixel
  ``[r, c]`` = source pixel row ``r`` (0 at the top), column ``c`` (0 at the left).
  An all-False mask is written as one all-zero frame (``omit_empty_frames=False``: a
  valid "nothing salient" answer rather than highdicom's fallback with a warning).
  None when the response has no saliency (``explain=false``).
* **SR** (:class:`highdicom.sr.ComprehensiveSR`, TID 1500): see
  :mod:`service.pacs.results_sr`.
* **GSPS** (:class:`highdicom.pr.GrayscaleSoftcopyPresentationState`): layer
  ``SHARPCXR`` with each box as a closed POLYLINE in PIXEL units and one text line, the
  source's Modality LUT / VOI window kept (highdicom copies them) and, for a
  MONOCHROME1 source, Presentation LUT Shape INVERSE so it displays as the source does.

Coordinates of boxes in the SR and the GSPS are DICOM image coordinates ``(column,
row)``, ``(0, 0)`` the top left corner of the top left pixel, pixel centres at ``+0.5``;
an inclusive box ``x_min..x_max, y_min..y_max`` is the rectangle ``[x_min, x_max + 1) x
[y_min, y_max + 1)`` (:func:`service.pacs.results_sr.box_scoord`).

All three live in the source's study (a new series each: SEG 9101, SR 9102, GSPS 9103)
and reference the source instance. Their Series/SOP Instance UIDs are deterministic
(:func:`result_uid` of the study / source instance UID, the object kind and the model's
sha256), so reprocessing the same instance with the same model makes the same objects
and a receiver sees a resend, not a duplicate. Patient and study attributes are copied
from the source by highdicom, nothing else; Type 2 ones the source lacks are written
empty (as the source's IOD means them), never invented. Pixel data is never read.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import sharpcxr
from imaging.rle import decode_coco_rle
from service.errors import ServiceError
from service.pacs.results_sr import Equipment, box_scoord, build_sr, decision
from service.pacs.store import ResultRow
from service.schemas import PredictResponse

BoolArray = npt.NDArray[np.bool_]

SERIES_NUMBERS = {"seg": 9101, "sr": 9102, "gsps": 9103}
MANUFACTURER = "sharpcxr"
GRAPHIC_LAYER = "SHARPCXR"

#: Type 1 attributes highdicom needs from the source (absent or empty: ResultBuildError)
_REQUIRED = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
)
#: Type 2 patient/study attributes highdicom reads; absent ones are written empty
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
)
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float/Double Float Pixel Data

# highdicom logs the UIDs of what it copies at INFO and DEBUG; the service logs job ids
# only, whatever the log level.
logging.getLogger("highdicom").setLevel(logging.WARNING)


class ResultBuildError(ServiceError):
    """The source cannot carry result objects (a missing mandatory attribute, an SOP class
    highdicom does not know, ...). Messages name attributes, never patient data; a 422
    (through the service's one error mapping) and a refused job."""

    code = "result_build_error"
    http_status = 422


@dataclass(frozen=True)
class ResultObjects:
    seg: pydicom.Dataset | None  # None only when the response has no saliency
    sr: pydicom.Dataset
    gsps: pydicom.Dataset

    def datasets(self) -> list[pydicom.Dataset]:
        """The objects that exist, in the order SEG, SR, GSPS."""
        return [ds for ds in (self.seg, self.sr, self.gsps) if ds is not None]


def result_uid(source_uid: str, kind: str, model_sha256: str) -> str:
    """Deterministic UID for the ``kind`` object of ``source_uid`` made by the model whose
    file has ``model_sha256``: same inputs, same UID (a resend after a crash overwrites at
    the receiver instead of duplicating)."""
    return str(generate_uid(entropy_srcs=[source_uid, kind, model_sha256]))


def _prepared(source: pydicom.Dataset) -> pydicom.Dataset:
    """A metadata-only copy of ``source`` that highdicom accepts, or ResultBuildError.

    Elements are deep copies (highdicom puts the elements it copies into the new object
    as they are, so objects would otherwise share, and mutate, the source's); pixel data
    is left out. Type 2 patient/study attributes the source lacks are added empty, and a
    Pixel Spacing that is not two positive numbers (e.g. ``0\\0``) is dropped so the
    SEG claims no spacing rather than an invalid one (Imager Pixel Spacing, at the
    detector, is never turned into the SEG's patient-plane Pixel Spacing).
    """
    for keyword in _REQUIRED:
        if keyword not in source or source[keyword].value in (None, ""):
            tag = pydicom.tag.Tag(keyword)
            raise ResultBuildError(f"source lacks the mandatory attribute {keyword} {tag}")
    if source.SamplesPerPixel != 1:
        raise ResultBuildError("source is not grayscale (SamplesPerPixel != 1)")
    if int(source.get("NumberOfFrames") or 1) != 1:
        raise ResultBuildError("source is multi-frame (NumberOfFrames > 1)")
    ds = pydicom.Dataset()
    if hasattr(source, "file_meta"):
        ds.file_meta = copy.deepcopy(source.file_meta)
    for element in source:
        if element.tag not in _PIXEL_TAGS:
            ds.add(copy.deepcopy(element))
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, None)
    if "PixelSpacing" in ds and not _positive_pair(ds.PixelSpacing):
        del ds.PixelSpacing
    return ds


def _positive_pair(value: Any) -> bool:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        return False
    try:
        return all(float(v) > 0 for v in value)
    except (TypeError, ValueError):
        return False


def _equipment(response: PredictResponse) -> Equipment:
    return {
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": response.model.name[:64],
        "software_versions": sharpcxr.__version__,
        "device_serial_number": f"sharpcxr-{response.model.sha256[:12]}",
    }


def _response_mask(response: PredictResponse) -> BoolArray:
    """The response's saliency mask decoded (RLE or PNG), source grid."""
    assert response.saliency is not None
    m = response.saliency.mask
    if m.format == "rle" and m.counts is not None:
        return decode_coco_rle({"size": [m.rows, m.columns], "counts": m.counts})
    if m.format == "png" and m.data is not None:
        import base64

        from imaging.saliency import decode_mask_png

        return decode_mask_png(base64.b64decode(m.data))
    raise ValueError(f"saliency mask of format {m.format!r} carries no data")


def _build_seg(
    source: pydicom.Dataset, response: PredictResponse, mask: BoolArray, sha: str
) -> hd.seg.Segmentation:
    assert response.saliency is not None
    model = response.model
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Pneumothorax saliency",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Pneumothorax,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=model.name,
            family=codes.cid7162.ArtificialIntelligence,
            version=model.version,
            parameters={
                "resolution": str(model.resolution),
                "sha256": sha,
                "saliency_method": response.saliency.method,
                "saliency_threshold": f"{response.saliency.threshold:g}",
            },
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=result_uid(source.StudyInstanceUID, "seg-series", sha),
        series_number=SERIES_NUMBERS["seg"],
        sop_instance_uid=result_uid(source.SOPInstanceUID, "seg", sha),
        instance_number=1,
        **_equipment(response),
        content_label="SALIENCY",
        content_description=f"{response.saliency.method} saliency of {model.name}"[:64],
        omit_empty_frames=False,
        series_description="sharpcxr pneumothorax saliency",
    )
    # General Image: Patient Orientation is Type 2C, required when there is no Image
    # Orientation (Patient), as for projection radiographs; highdicom does not set it.
    # The SEG shares the source's grid, so it shares its orientation (empty if unknown).
    if "PatientOrientation" not in seg:
        seg.PatientOrientation = source.get("PatientOrientation") or None
    return seg


def summary_line(response: PredictResponse) -> str:
    """The GSPS text: one ASCII line, e.g. ``sharpcxr 0.5.0 @512: pneumothorax p=0.91
    (threshold 0.50) POSITIVE`` or ``... NOT ASSESSABLE: not_chest (p=0.12, reference
    only)``."""
    head = f"sharpcxr {sharpcxr.__version__} @{response.model.resolution}:"
    p = f"p={response.probability:.2f}"
    verdict = decision(response)
    if verdict == "not_assessable":
        reasons = ", ".join(r.code for r in response.assessment.reasons) or "unknown"
        text = f"{head} NOT ASSESSABLE: {reasons} ({p}, reference only)"
    else:
        text = f"{head} pneumothorax {p} (threshold {response.threshold:.2f}) {verdict.upper()}"
    return text.encode("ascii", "replace").decode("ascii")[:1024]


def _build_gsps(
    source: pydicom.Dataset, response: PredictResponse, sha: str
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    rows, columns = int(source.Rows), int(source.Columns)
    layer = hd.pr.GraphicLayer(
        layer_name=GRAPHIC_LAYER, order=1, description="sharpcxr pneumothorax findings"
    )
    boxes = [
        hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
            graphic_data=box_scoord(box),
            units=hd.pr.AnnotationUnitsValues.PIXEL,
        )
        for box in response.boxes
    ]
    text = hd.pr.TextObject(
        text_value=summary_line(response),
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        # a band across the top of the image, inside it whatever its size
        bounding_box=(0.02 * columns, 0.02 * rows, 0.98 * columns, 0.08 * rows),
        text_justification=hd.pr.TextJustificationValues.LEFT,
    )
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[source],
        graphic_layer=layer,
        graphic_objects=boxes or None,
        text_objects=[text],
    )
    extra: dict[str, Any] = {}
    if source.PhotometricInterpretation == "MONOCHROME1":
        # GSPS output is P-values (bright = high); MONOCHROME1 stores bright = low.
        extra["presentation_lut_transformation"] = hd.PresentationLUTTransformation(
            presentation_lut_shape=hd.PresentationLUTShapeValues.INVERSE
        )
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        series_instance_uid=result_uid(source.StudyInstanceUID, "gsps-series", sha),
        series_number=SERIES_NUMBERS["gsps"],
        sop_instance_uid=result_uid(source.SOPInstanceUID, "gsps", sha),
        instance_number=1,
        **_equipment(response),
        content_label=GRAPHIC_LAYER,
        content_description="sharpcxr pneumothorax boxes and result",
        graphic_annotations=[annotation],
        graphic_layers=[layer],
        series_description="sharpcxr pneumothorax annotations",
        **extra,
    )
    # General Series: Laterality is Type 2C, required for a paired body part; a PR has no
    # Image Laterality, so say which body part the series is about: the source's, else
    # the chest (unpaired, what the service reads). Laterality is copied when known and
    # left empty ("unknown") for another body part.
    gsps.BodyPartExamined = source.get("BodyPartExamined") or "CHEST"
    laterality = source.get("Laterality") or source.get("ImageLaterality")
    if laterality in ("L", "R"):
        gsps.Laterality = laterality
    elif gsps.BodyPartExamined != "CHEST":
        gsps.Laterality = None
    return gsps


def _sr_uids(source: pydicom.Dataset, response: PredictResponse, sha: str) -> dict[str, str]:
    src = source.SOPInstanceUID
    uids = {
        "series": result_uid(source.StudyInstanceUID, "sr-series", sha),
        "instance": result_uid(src, "sr", sha),
        "device": result_uid("sharpcxr", "device", sha),
        "track:pneumothorax": result_uid(src, "sr-track-pneumothorax", sha),
    }
    for index in range(1, len(response.boxes) + 1):
        uids[f"track:box {index}"] = result_uid(src, f"sr-track-box-{index}", sha)
    return uids


def build_results(
    source: pydicom.Dataset, response: PredictResponse, mask: BoolArray | None = None
) -> ResultObjects:
    """SEG (when the response has saliency), SR and GSPS for ``response`` about ``source``.

    ``mask`` is the response's saliency mask on the source grid (bool ``(rows, columns)``,
    True = salient), already decoded by the caller; None decodes it from the response.
    Raises :class:`ResultBuildError` when the source cannot carry results, ValueError when
    ``mask``/``response`` do not fit the source.
    """
    prepared = _prepared(source)
    sha = response.model.sha256
    rows, columns = int(prepared.Rows), int(prepared.Columns)
    if (response.image.rows, response.image.columns) != (rows, columns):
        raise ValueError("the response is about an image of another size than the source")
    if response.saliency is None and mask is not None:
        raise ValueError("a mask was given but the response has no saliency")
    if response.saliency is not None:
        mask = _response_mask(response) if mask is None else np.asarray(mask, dtype=bool)
        if mask.shape != (rows, columns):
            raise ValueError(f"mask shape {mask.shape} is not the source's ({rows}, {columns})")
    try:
        with warnings.catch_warnings():
            # highdicom warns about odd person names quoting them: no patient data in logs
            warnings.filterwarnings("ignore", message=".*person name", category=UserWarning)
            seg = None if mask is None else _build_seg(_prepared(source), response, mask, sha)
            sr = build_sr(
                _prepared(source),
                response,
                uids=_sr_uids(prepared, response, sha),
                series_number=SERIES_NUMBERS["sr"],
                equipment=_equipment(response),
            )
            gsps = _build_gsps(_prepared(source), response, sha)
    except AttributeError as exc:
        raise ResultBuildError(f"source lacks the attribute {exc.name or '?'}") from exc
    except KeyError as exc:
        # highdicom looks the source's SOP Class up in its IOD tables
        raise ResultBuildError(f"highdicom does not know the source's IOD ({exc})") from exc
    except (ValueError, TypeError) as exc:
        raise ResultBuildError(f"highdicom refused the source: {type(exc).__name__}") from exc
    return ResultObjects(seg=seg, sr=sr, gsps=gsps)


def part10(ds: pydicom.Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file (preamble, file meta, its transfer syntax)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def result_rows(source_bytes: bytes, response: PredictResponse) -> list[ResultRow]:
    """The SEG, SR and GSPS for one answered instance, encoded (CPU work: run in a pool)."""
    source = pydicom.dcmread(io.BytesIO(source_bytes), stop_before_pixels=True)
    made = build_results(source, response)
    rows = []
    for kind, ds in (("seg", made.seg), ("sr", made.sr), ("gsps", made.gsps)):
        if ds is not None:
            rows.append(ResultRow(
                sop_instance_uid=str(ds.SOPInstanceUID), kind=kind,
                sop_class_uid=str(ds.SOPClassUID),
                series_instance_uid=str(ds.SeriesInstanceUID), data=part10(ds),
            ))  # fmt: skip
    return rows
