"""The Comprehensive SR (TID 1500 Measurement Report) of one prediction, with highdicom.

Coordinates: every region is a 2-D SCOORD in the *source image's* pixel grid, in DICOM
image coordinates: ``(column, row)`` pairs where ``(0, 0)`` is the top left corner of the
top left pixel, pixel ``(c, r)`` covers ``[c, c + 1) x [r, r + 1)`` and its centre is
``(c + 0.5, r + 0.5)`` (PS3.3 C.18.6.1.2). A box with inclusive corner indices
``x_min..x_max`` (columns), ``y_min..y_max`` (rows) is therefore the closed rectangle
``(x_min, y_min) (x_max + 1, y_min) (x_max + 1, y_max + 1) (x_min, y_max + 1) (x_min,
y_min)``; :func:`box_scoord` builds it and :func:`box_from_scoord` inverts it exactly
(the values are integers, exact in the SCOORD's FL).

Content (all under the report's "Imaging Measurements" container):

* one image-level TID 1501 group (tracking id ``pneumothorax``): finding Pneumothorax
  (SCT 36118008), the algorithm (TID 4019: model name, version, parameters
  ``resolution=``, ``sha256=``, ``architecture=``, family Artificial Intelligence),
  measurements Probability (DCM 122157, the calibrated probability, unit
  ``{probability}``), Threshold Value (DCM 122411, the operating point), OOD score and
  OOD threshold (local codes, unit ``1``), qualitative evaluations Pneumothorax =
  Positive (SCT 10828004) / Negative (SCT 260385009) / Undetermined (SCT 373068000,
  not assessable), Image assessable = Yes/No, In distribution = Yes/No, and TEXT items:
  one "Reason not assessable" per reason (``code: message``) and the OOD method;
* one TID 1410 planar ROI group per box (tracking id ``box N``, 1-based in response
  order): the closed POLYLINE region, Saliency (DCM 130404, the box's peak normalised
  saliency, unit ``1``) and Area (SCT 42798000) in ``mm2`` when the response has a
  physical area, else in ``{pixels}``.

Concepts without a standard code use the local scheme ``99SHARPCXR`` (declared in the
Coding Scheme Identification Sequence).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from service.schemas import BoxOut, PredictResponse


class Equipment(TypedDict):
    """The General Equipment attributes of every result object, as highdicom's keywords."""

    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str


LOCAL_SCHEME = "99SHARPCXR"
OOD_SCORE = Code("OOD-SCORE", LOCAL_SCHEME, "Out-of-distribution score")
OOD_THRESHOLD = Code("OOD-THRESHOLD", LOCAL_SCHEME, "Out-of-distribution threshold")
OOD_METHOD = Code("OOD-METHOD", LOCAL_SCHEME, "Out-of-distribution method")
IN_DISTRIBUTION = Code("IN-DISTRIBUTION", LOCAL_SCHEME, "Image in distribution")
ASSESSABLE = Code("ASSESSABLE", LOCAL_SCHEME, "Image assessable")
NOT_ASSESSABLE_REASON = Code("NA-REASON", LOCAL_SCHEME, "Reason not assessable")
STANDARD_CHEST_XRAY = Code("168731009", "SCT", "Standard chest X-ray")
PROBABILITY_UNIT = Code("{probability}", "UCUM", "probability")
PIXELS_UNIT = Code("{pixels}", "UCUM", "pixels")
#: decision -> coded value of the Pneumothorax qualitative evaluation
DECISION_CODES = {
    "positive": codes.SCT.Positive,
    "negative": codes.SCT.Negative,
    "not_assessable": codes.SCT.Undetermined,
}
CODING_SCHEME = hd.coding_schemes.CodingSchemeIdentificationItem(
    designator=LOCAL_SCHEME,
    name="sharpcxr local codes",
    responsible_organization="sharpcxr",
)


def decision(response: PredictResponse) -> str:
    """``positive`` / ``negative`` / ``not_assessable`` (``positive`` is None then)."""
    if response.assessment.status != "assessed" or response.positive is None:
        return "not_assessable"
    return "positive" if response.positive else "negative"


def box_scoord(box: BoxOut) -> npt.NDArray[np.float64]:
    """The box as a closed 5-point polyline of ``(column, row)`` SCOORD points (module doc)."""
    x0, y0, x1, y1 = box.x_min, box.y_min, box.x_max + 1, box.y_max + 1
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64)


def box_from_scoord(points: Sequence[float] | npt.NDArray[np.float64]) -> tuple[int, int, int, int]:
    """Inverse of :func:`box_scoord`: inclusive ``(x_min, y_min, x_max, y_max)`` indices."""
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x0, y0 = xy.min(axis=0)
    x1, y1 = xy.max(axis=0)
    return round(x0), round(y0), round(x1) - 1, round(y1) - 1


def algorithm(response: PredictResponse) -> hd.sr.AlgorithmIdentification:
    """TID 4019 for the model that served ``response``."""
    model = response.model
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[
            f"resolution={model.resolution}",
            f"sha256={model.sha256}",
            f"architecture={model.architecture}",
        ],
        family=codes.cid7162.ArtificialIntelligence,
        manufacturer="sharpcxr",
    )


def _yes_no(flag: bool) -> Code:
    answer: Code = codes.SCT.Yes if flag else codes.SCT.No
    return answer


def _image_group(
    source: pydicom.Dataset, response: PredictResponse, tracking_uid: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    unit_one = codes.UCUM.NoUnits
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier="pneumothorax"),
        finding_type=codes.SCT.Pneumothorax,
        algorithm_id=algorithm(response),
        measurements=[
            hd.sr.Measurement(codes.DCM.Probability, response.probability, PROBABILITY_UNIT),
            hd.sr.Measurement(codes.DCM.ThresholdValue, response.threshold, PROBABILITY_UNIT),
            hd.sr.Measurement(OOD_SCORE, response.ood.score, unit_one),
            hd.sr.Measurement(OOD_THRESHOLD, response.ood.threshold, unit_one),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(codes.SCT.Pneumothorax, DECISION_CODES[decision(response)]),
            hd.sr.QualitativeEvaluation(
                ASSESSABLE, _yes_no(response.assessment.status == "assessed")
            ),
            hd.sr.QualitativeEvaluation(IN_DISTRIBUTION, _yes_no(response.ood.in_distribution)),
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    # TID 1501 allows TEXT qualitative evaluations; highdicom's template takes coded ones
    # only, so the free-text items are appended to the group's content as content items.
    texts = [(NOT_ASSESSABLE_REASON, f"{r.code}: {r.message}") for r in response.assessment.reasons]
    texts.append((OOD_METHOD, response.ood.method))
    for name, value in texts:
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
        )
    return group


def _box_group(
    source: pydicom.Dataset, response: PredictResponse, index: int, box: BoxOut, tracking_uid: str
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    if box.area_mm2 is not None:
        area = hd.sr.Measurement(codes.SCT.Area, box.area_mm2, codes.UCUM.SquareMillimeter)
    else:
        area = hd.sr.Measurement(codes.SCT.Area, float(box.area_px), PIXELS_UNIT)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=box_scoord(box),
        source_image=hd.sr.SourceImageForRegion.from_source_image(source),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=f"box {index}"),
        referenced_region=region,
        finding_type=codes.SCT.Pneumothorax,
        algorithm_id=algorithm(response),
        measurements=[
            hd.sr.Measurement(codes.DCM.Saliency, box.score, codes.UCUM.NoUnits),
            area,
        ],
    )


def _describable(source: pydicom.Dataset) -> bool:
    """Whether highdicom can write the source's Image Library entry (TID 1601).

    For projection radiographs it needs Patient Orientation (two values) and Imager Pixel
    Spacing, which many CR/DX files lack; the library is optional in TID 1500, so it is
    left out then (the source is still referenced by every region and the evidence).
    """
    try:
        hd.sr.ImageLibraryEntryDescriptors(source)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return False
    return True


def build_sr(
    source: pydicom.Dataset,
    response: PredictResponse,
    *,
    uids: dict[str, str],
    series_number: int,
    equipment: Equipment,
) -> hd.sr.ComprehensiveSR:
    """The SR of ``response`` for ``source`` (metadata only; pixel data is not needed).

    ``uids`` holds ``series``, ``instance``, ``device`` and ``track:<name>`` UIDs for the
    tracking identifiers ``pneumothorax`` and ``box 1``.. (deterministic, from the
    caller); ``equipment`` the General Equipment values (``manufacturer``,
    ``manufacturer_model_name``, ``software_versions``, ``device_serial_number``).
    """
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids["device"],
            name="sharpcxr",
            manufacturer_name=equipment["manufacturer"],
            model_name=equipment["manufacturer_model_name"],
            serial_number=equipment["device_serial_number"],
        ),
    )
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = [_image_group(source, response, uids["track:pneumothorax"])]
    for index, box in enumerate(response.boxes, start=1):
        groups.append(_box_group(source, response, index, box, uids[f"track:box {index}"]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=STANDARD_CHEST_XRAY,
        imaging_measurements=groups,
        referenced_images=[source] if _describable(source) else None,
    )
    return hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=uids["series"],
        series_number=series_number,
        sop_instance_uid=uids["instance"],
        instance_number=1,
        is_complete=True,
        is_final=False,
        is_verified=False,
        coding_schemes=[CODING_SCHEME],
        series_description="sharpcxr pneumothorax AI report",
        **equipment,
    )
