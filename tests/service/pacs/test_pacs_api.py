"""STOW-RS in, jobs, results and DICOM predict answers through the real app (TestClient)."""

from __future__ import annotations

import email.parser
import email.policy
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from imaging.rle import decode_coco_rle
from service.pacs.related import encode_related
from tests.conftest import pydicom_file
from tests.service.conftest import PATIENT_ID, PATIENT_NAME, make_client, phantom, phantom_dicom
from tests.service.pacs.readback import gsps_boxes, seg_mask, sr_findings

SEG, SR, GSPS = (
    "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.88.33",
    ("1.2.840.10008.5.1.4.1.1.11.1"),
)
DICOM_ANSWER = {"accept": 'multipart/related; type="application/dicom"'}


def split_related(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """The parts of a multipart/related body, parsed by the standard library's MIME parser
    (independent of the service's own parser): ``[(content type, bytes), ...]``."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    assert message.get_content_type() == "multipart/related"
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in message.iter_parts()]


def header(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def stow(client: TestClient, parts: list[bytes], path: str = "/dicomweb/studies") -> Any:
    content_type, body = encode_related(parts)
    return client.post(path, content=body, headers={"content-type": content_type})


def wait_finished(client: TestClient, study_uid: str, count: int, timeout_s: float = 90) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = client.get(f"/v1/studies/{study_uid}/results")
        if r.status_code == 200:
            jobs = r.json()["instances"]
            if len(jobs) >= count and all(j["state"] not in ("queued", "processing") for j in jobs):
                return jobs
        time.sleep(0.2)
    raise AssertionError(f"jobs of the study not finished in {timeout_s} s: {r.text[:500]}")


@pytest.fixture(scope="module")
def pacs_client(models_dir: Path) -> Any:
    with make_client(models_dir, default_resolution=256) as c:
        yield c


def test_stow_stores_jobs_answers_then_results_follow(pacs_client: TestClient) -> None:
    data = phantom_dicom(phantom(0, size=640))
    source = header(data)
    r = stow(pacs_client, [data])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    answer = pydicom.Dataset.from_json(r.json())
    [ref] = answer.ReferencedSOPSequence
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "FailedSOPSequence" not in answer

    [job] = wait_finished(pacs_client, source.StudyInstanceUID, 1)
    assert job["state"] == "done" and job["source"] == "stow" and job["error"] is None
    assert job["sop_instance_uid"] == source.SOPInstanceUID
    assert pacs_client.get(f"/v1/jobs/{job['job_id']}").json() == job
    # The job's answer is /v1/predict's own for the same bytes (same model, same pipeline).
    direct = pacs_client.post(
        "/v1/predict?mask_format=rle", content=data, headers={"content-type": "application/dicom"}
    ).json()
    assert job["result"]["probability"] == pytest.approx(direct["probability"], abs=1e-6)
    assert job["result"]["boxes"] == direct["boxes"]

    kinds = {o["kind"]: o for o in job["objects"]}
    assert set(kinds) == {"seg", "sr", "gsps"}
    objects = {}
    for kind, obj in kinds.items():
        got = pacs_client.get(obj["url"])
        assert got.status_code == 200 and got.headers["content-type"] == "application/dicom"
        ds = pydicom.dcmread(io.BytesIO(got.content))
        assert ds.SOPInstanceUID == obj["sop_instance_uid"]
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        objects[kind] = ds
    mask = decode_coco_rle({"size": [640, 640], "counts": direct["saliency"]["mask"]["counts"]})
    assert np.array_equal(seg_mask(objects["seg"]), mask)
    findings = sr_findings(objects["sr"])
    assert findings["probability"] == pytest.approx(direct["probability"], abs=1e-6)
    expected = [(b["x_min"], b["y_min"], b["x_max"], b["y_max"]) for b in direct["boxes"]]
    assert findings["boxes"] == expected and gsps_boxes(objects["gsps"]) == expected
    assert job["deliveries"] == []  # no destination configured

    metrics = pacs_client.get("/metrics").text
    assert 'sharpcxr_jobs_total{source="stow",state="done"}' in metrics
    assert "sharpcxr_outbox_depth 0.0" in metrics


def test_same_instance_twice_makes_one_job(pacs_client: TestClient) -> None:
    data = phantom_dicom(phantom(1, size=512, positive=False))
    study = header(data).StudyInstanceUID
    assert stow(pacs_client, [data]).status_code == 200
    assert stow(pacs_client, [data, data]).status_code == 200  # stored: it already is
    jobs = wait_finished(pacs_client, study, 1)
    assert len(jobs) == 1 and jobs[0]["state"] == "done" and len(jobs[0]["objects"]) == 3


def test_bad_parts_fail_alone_and_the_good_ones_are_stored(pacs_client: TestClient) -> None:
    good = phantom_dicom(phantom(2, size=512))
    truncated = pydicom_file("RG1_UNCR.dcm")
    parts = [
        b"not a dicom file at all" * 50,
        good,
        truncated[: len(truncated) // 2],
        pydicom_file("test-SR.dcm"),
    ]
    r = stow(pacs_client, parts)
    assert r.status_code == 202, r.text
    answer = pydicom.Dataset.from_json(r.json())
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [
        header(good).SOPInstanceUID
    ]
    reasons = [int(i.FailureReason) for i in answer.FailedSOPSequence]
    assert reasons == [0xC000, 0xC000, 0x0122]
    warnings = r.headers.get_list("warning")
    assert len(warnings) == 3 and warnings[0].startswith('299 sharpcxr "part 1:')
    assert all(PATIENT_NAME not in w and PATIENT_ID not in w for w in warnings)
    assert wait_finished(pacs_client, header(good).StudyInstanceUID, 1)[0]["state"] == "done"


def test_oversized_part_fails_alone(models_dir: Path) -> None:
    small = phantom_dicom(phantom(3, size=256))
    big = phantom_dicom(phantom(4, size=1024))
    with make_client(models_dir, default_resolution=256, max_upload_mb=0.5) as c:
        r = stow(c, [big, small])
        assert r.status_code == 202, r.text
        answer = pydicom.Dataset.from_json(r.json())
        assert [int(i.FailureReason) for i in answer.FailedSOPSequence] == [0xA700]
        assert answer.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            header(small).SOPInstanceUID
        )
        r = stow(c, [big])
        assert r.status_code == 409


def test_study_path_refuses_other_studies(pacs_client: TestClient) -> None:
    data = phantom_dicom(phantom(5, size=256))
    r = stow(pacs_client, [data], path="/dicomweb/studies/1.2.3.4")
    assert r.status_code == 409
    assert int(pydicom.Dataset.from_json(r.json()).FailedSOPSequence[0].FailureReason) == 0xC409


@pytest.mark.parametrize(
    ("content_type", "status", "code"),
    [
        ("application/dicom", 415, "unsupported_media_type"),
        (
            'multipart/related; type="application/dicom+json"; boundary=x',
            415,
            "unsupported_media_type",
        ),
        ('multipart/related; type="application/dicom"', 400, "bad_multipart"),
    ],
)
def test_stow_request_errors(
    pacs_client: TestClient, content_type: str, status: int, code: str
) -> None:
    r = pacs_client.post(
        "/dicomweb/studies", content=b"x" * 100, headers={"content-type": content_type}
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_not_assessable_instance_is_refused_with_the_reason(pacs_client: TestClient) -> None:
    lateral = pydicom.dcmread(io.BytesIO(phantom_dicom(phantom(6, size=256))))
    lateral.ViewPosition = "LL"
    buffer = io.BytesIO()
    lateral.save_as(buffer, enforce_file_format=True)
    assert stow(pacs_client, [buffer.getvalue()]).status_code == 200
    [job] = wait_finished(pacs_client, lateral.StudyInstanceUID, 1)
    assert job["state"] == "refused" and job["error"]["code"] == "lateral_view"
    assert job["objects"] == [] and job["result"] is None


def test_lookups_of_unknown_things_are_404(pacs_client: TestClient) -> None:
    for path in ("/v1/jobs/" + "0" * 32, "/v1/studies/1.2.3/results", "/v1/results/1.2.3"):
        r = pacs_client.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
    assert pacs_client.get("/v1/jobs/not-a-job").status_code == 422


def test_predict_answers_dicom_objects_on_request(pacs_client: TestClient) -> None:
    data = phantom_dicom(phantom(7, size=512))
    r = pacs_client.post(
        "/v1/predict", content=data, headers={"content-type": "application/dicom", **DICOM_ANSWER}
    )
    assert r.status_code == 200, r.text
    parts = split_related(r.headers["content-type"], r.content)
    assert [t for t, _ in parts] == ["application/dicom"] * 3
    classes = [str(header(p).SOPClassUID) for _, p in parts]
    assert classes == [SEG, SR, GSPS]
    r = pacs_client.post(
        "/v1/predict?explain=false",
        content=data,
        headers={"content-type": "application/dicom", **DICOM_ANSWER},
    )
    assert [
        str(header(p).SOPClassUID) for _, p in split_related(r.headers["content-type"], r.content)
    ] == [SR, GSPS]


def test_dicomweb_needs_the_api_key(models_dir: Path) -> None:
    with make_client(models_dir, default_resolution=256, api_keys="k1") as c:
        data = phantom_dicom(phantom(8, size=256))
        assert stow(c, [data]).status_code == 401
        content_type, body = encode_related([data])
        r = c.post(
            "/dicomweb/studies",
            content=body,
            headers={"content-type": content_type, "x-api-key": "k1"},
        )
        assert r.status_code == 200
        assert c.get("/v1/studies/1.2.3/results").status_code == 401
