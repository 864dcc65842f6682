"""DICOM result objects (SEG, SR, GSPS) from real service responses, read back and checked
with dciodvfy (dicom3tools)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from imaging.rle import decode_coco_rle
from service.pacs.results import ResultBuildError, ResultObjects, build_results, result_uid
from service.schemas import PredictResponse
from tests.conftest import FAKE_MONO1_FILE, SIIM_FILE, pydicom_file, rewrite, to_bytes
from tests.service.conftest import PATIENT_ID, PATIENT_NAME, make_client, phantom, phantom_dicom
from tests.service.pacs.readback import (
    dciodvfy_errors,
    errors_not_from_source,
    gsps_boxes,
    gsps_text,
    seg_mask,
    sr_findings,
)

DICOM = {"Content-Type": "application/dicom"}


@dataclass(frozen=True)
class Case:
    data: bytes
    source: pydicom.Dataset
    response: PredictResponse
    mask: np.ndarray[Any, np.dtype[np.bool_]] | None

    def build(self) -> ResultObjects:
        return build_results(self.source, self.response, self.mask)


def predict(client: TestClient, data: bytes, query: str = "mask_format=rle") -> Case:
    r = client.post(f"/v1/predict?{query}", content=data, headers=DICOM)
    assert r.status_code == 200, r.text
    response = PredictResponse.model_validate(r.json())
    mask = None
    if response.saliency is not None:
        m = response.saliency.mask
        assert m.counts is not None
        mask = decode_coco_rle({"size": [m.rows, m.columns], "counts": m.counts})
    return Case(data, pydicom.dcmread(io.BytesIO(data)), response, mask)


@pytest.fixture(scope="module")
def positive(client: TestClient) -> Case:
    case = predict(client, phantom_dicom(phantom(0, size=640)))
    assert case.response.positive is True and case.response.boxes
    assert case.mask is not None and case.mask.any()
    return case


@pytest.fixture(scope="module")
def siim(client: TestClient) -> Case:
    """A real CR chest the model finds out of distribution: not assessable."""
    return predict(client, SIIM_FILE.read_bytes())


def _sources() -> dict[str, bytes]:
    return {
        "phantom-uncompressed": phantom_dicom(phantom(1, size=512)),
        "RG1_J2KR": pydicom_file("RG1_J2KR.dcm"),  # JPEG 2000, MONOCHROME1, PixelSpacing 0\0
        "fake-MONOCHROME1": FAKE_MONO1_FILE.read_bytes(),
        "SIIM": SIIM_FILE.read_bytes(),  # JPEG baseline secondary capture
    }


def _referenced_uids(ds: pydicom.Dataset) -> set[str]:
    """Every Referenced SOP Instance UID anywhere in ``ds`` (sequences walked)."""
    found: set[str] = set()
    for element in ds:
        if element.keyword == "ReferencedSOPInstanceUID":
            found.add(str(element.value))
        elif element.VR == "SQ":
            for item in element.value:
                found |= _referenced_uids(item)
    return found


def test_positive_phantom_round_trips(positive: Case) -> None:
    objects = positive.build()
    response, source = positive.response, positive.source
    assert positive.mask is not None and objects.seg is not None
    assert objects.datasets() == [objects.seg, objects.sr, objects.gsps]

    assert np.array_equal(seg_mask(objects.seg), positive.mask)  # IoU 1.0
    found = sr_findings(objects.sr)
    assert found["probability"] == response.probability
    assert found["threshold"] == response.threshold
    assert found["decision"] == "positive" and found["reasons"] == []
    assert found["ood_score"] == response.ood.score
    assert found["ood_threshold"] == response.ood.threshold
    expected = [(b.x_min, b.y_min, b.x_max, b.y_max) for b in response.boxes]
    assert found["boxes"] == expected and gsps_boxes(objects.gsps) == expected
    assert found["box_scores"] == [b.score for b in response.boxes]
    assert found["box_areas"] == [(b.area_mm2, "mm2") for b in response.boxes]
    text = gsps_text(objects.gsps)
    assert text.startswith("sharpcxr ") and text.endswith("POSITIVE")
    assert f"@{response.model.resolution}:" in text and f"p={response.probability:.2f}" in text

    for ds in objects.datasets():
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.Manufacturer == "sharpcxr"
        assert source.SOPInstanceUID in _referenced_uids(ds)
    assert found["referenced_sop_instance_uids"] == {source.SOPInstanceUID}
    assert len({ds.SeriesInstanceUID for ds in objects.datasets()}) == 3


def test_empty_mask_is_a_valid_seg(positive: Case) -> None:
    rows, columns = positive.source.Rows, positive.source.Columns
    assert positive.response.saliency is not None
    saliency = positive.response.saliency.model_copy(
        update={
            "mask": positive.response.saliency.mask.model_copy(update={"counts": [rows * columns]})
        }
    )
    response = positive.response.model_copy(update={"saliency": saliency, "boxes": []})
    empty = np.zeros((rows, columns), dtype=bool)
    objects = build_results(positive.source, response, empty)
    assert objects.seg is not None and objects.seg.NumberOfFrames == 1
    assert not seg_mask(objects.seg).any()
    assert sr_findings(objects.sr)["boxes"] == [] and gsps_boxes(objects.gsps) == []
    for ds in objects.datasets():
        assert dciodvfy_errors(ds) == []
    # None: decoded from the response itself
    again = build_results(positive.source, response, None)
    assert again.seg is not None and not seg_mask(again.seg).any()


def test_no_saliency_means_no_seg(client: TestClient, positive: Case) -> None:
    case = predict(client, positive.data, "explain=false")
    objects = case.build()
    assert objects.seg is None and objects.datasets() == [objects.sr, objects.gsps]
    assert sr_findings(objects.sr)["boxes"] == []
    with pytest.raises(ValueError, match="no saliency"):
        build_results(case.source, case.response, np.zeros((640, 640), dtype=bool))


def test_uids_are_deterministic_per_instance_and_model(client: TestClient, positive: Case) -> None:
    first, second = positive.build(), positive.build()
    for a, b in zip(first.datasets(), second.datasets(), strict=True):
        assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    sha = positive.response.model.sha256
    assert first.sr.SOPInstanceUID == result_uid(positive.source.SOPInstanceUID, "sr", sha)
    assert len({ds.SOPInstanceUID for ds in first.datasets()}) == 3
    other_model = predict(client, positive.data, "mask_format=rle&resolution=128").build()
    assert other_model.sr.SOPInstanceUID != first.sr.SOPInstanceUID
    assert [ds.SeriesNumber for ds in first.datasets()] == [9101, 9102, 9103]


def _patient_elements(ds: pydicom.Dataset) -> dict[str, Any]:
    """Non-empty top-level Patient IE attributes (group 0010)."""
    return {e.keyword: str(e.value) for e in ds if e.tag.group == 0x0010 and e.value}


def test_no_patient_data_beyond_the_source(client: TestClient, positive: Case) -> None:
    source_patient = _patient_elements(positive.source)
    assert source_patient["PatientName"] == PATIENT_NAME
    for ds in positive.build().datasets():
        patient = _patient_elements(ds)
        assert patient.items() <= source_patient.items()
        assert patient["PatientID"] == PATIENT_ID

    anonymous = pydicom.dcmread(io.BytesIO(positive.data))
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        delattr(anonymous, keyword)
    objects = build_results(anonymous, positive.response, positive.mask)
    for ds in objects.datasets():
        assert _patient_elements(ds) == {}
        assert PATIENT_NAME not in str(ds) and PATIENT_ID not in str(ds)
        assert dciodvfy_errors(ds) == []


@pytest.mark.parametrize("name", list(_sources()))
def test_objects_pass_dciodvfy(client: TestClient, name: str) -> None:
    case = predict(client, _sources()[name])
    source_errors = dciodvfy_errors(case.data)
    objects = case.build()
    assert objects.seg is not None and case.mask is not None
    assert np.array_equal(seg_mask(objects.seg), case.mask)
    for ds in objects.datasets():
        assert errors_not_from_source(ds, source_errors) == [], ds.Modality
    if case.source.PhotometricInterpretation == "MONOCHROME1":
        assert objects.gsps.PresentationLUTShape == "INVERSE"
    else:
        assert objects.gsps.PresentationLUTShape == "IDENTITY"
    if "WindowCenter" in case.source:  # the source's window is kept
        voi = objects.gsps.SoftcopyVOILUTSequence[0]
        assert float(voi.WindowCenter) == float(case.source.WindowCenter)


def test_not_assessable_sr_says_so(siim: Case) -> None:
    response = siim.response
    assert response.assessment.status == "not_assessable" and response.positive is None
    objects = siim.build()
    found = sr_findings(objects.sr)
    assert found["decision"] == "not_assessable"
    codes = [r.code for r in response.assessment.reasons]
    assert [reason.split(":")[0] for reason in found["reasons"]] == codes
    assert found["probability"] == response.probability  # for reference, labelled
    assert "NOT ASSESSABLE: out_of_distribution" in gsps_text(objects.gsps)


def test_gate_flag_reasons_reach_the_sr(models_dir: Path) -> None:
    """A lateral chest in gate flag mode: two reasons, in the response's order."""
    lateral = rewrite("RG1_UNCR.dcm", ViewPosition="LL")
    with make_client(models_dir, default_resolution=256, gate="flag") as c:
        case = predict(c, lateral)
    codes = [r.code for r in case.response.assessment.reasons]
    assert codes[0] == "lateral_view" and len(codes) >= 2
    objects = case.build()
    found = sr_findings(objects.sr)
    assert found["decision"] == "not_assessable"
    assert found["reasons"] == [f"{r.code}: {r.message}" for r in case.response.assessment.reasons]
    assert gsps_text(objects.gsps).count("NOT ASSESSABLE: " + ", ".join(codes)) == 1


@pytest.mark.parametrize("spacing", ["none", "imager-only"])
def test_sources_without_pixel_spacing(client: TestClient, spacing: str) -> None:
    ds = pydicom.dcmread(io.BytesIO(phantom_dicom(phantom(2, size=512))))
    del ds.PixelSpacing
    if spacing == "none":
        del ds.ImagerPixelSpacing
    case = predict(client, to_bytes(ds))
    objects = case.build()
    assert objects.seg is not None and case.mask is not None
    assert np.array_equal(seg_mask(objects.seg), case.mask)
    assert "PixelMeasuresSequence" not in objects.seg.SharedFunctionalGroupsSequence[0]
    found = sr_findings(objects.sr)
    areas = [(b.area_mm2, "mm2") if b.area_mm2 is not None else (b.area_px, "{pixels}")
             for b in case.response.boxes]  # fmt: skip
    assert found["box_areas"] == areas
    for obj in objects.datasets():
        assert dciodvfy_errors(obj) == []


def test_unusable_sources_raise_result_build_error(positive: Case) -> None:
    ds = pydicom.dcmread(io.BytesIO(positive.data))
    del ds.StudyInstanceUID
    with pytest.raises(ResultBuildError, match="StudyInstanceUID") as err:
        build_results(ds, positive.response, positive.mask)
    assert PATIENT_NAME not in str(err.value) and PATIENT_ID not in str(err.value)

    ds = pydicom.dcmread(io.BytesIO(positive.data))
    ds.SOPClassUID = "1.2.826.0.1.3680043.8.498.1"  # a private SOP class highdicom cannot map
    with pytest.raises(ResultBuildError, match="IOD"):
        build_results(ds, positive.response, positive.mask)

    with pytest.raises(ValueError, match="mask shape"):
        build_results(positive.source, positive.response, np.zeros((3, 3), dtype=bool))


def test_source_is_not_modified_and_needs_no_pixels(positive: Case, tmp_path: Path) -> None:
    before = to_bytes(positive.source)
    header_only = pydicom.dcmread(io.BytesIO(positive.data), stop_before_pixels=True)
    objects = build_results(header_only, positive.response, positive.mask)
    assert objects.seg is not None and np.array_equal(seg_mask(objects.seg), positive.mask)
    assert to_bytes(positive.source) == before
    objects.sr.PatientName = "Changed^Later"  # objects do not share elements
    assert positive.source.PatientName == PATIENT_NAME == objects.gsps.PatientName
    for ds in objects.datasets():  # what a sender writes: Part 10 files
        path = tmp_path / f"{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert pydicom.dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
