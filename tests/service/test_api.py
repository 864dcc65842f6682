"""The HTTP API in-process (FastAPI TestClient, lifespan included): contracts and errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from imaging.rle import decode_coco_rle
from imaging.saliency import decode_mask_png
from tests.conftest import SIIM_FILE, pydicom_file, rewrite
from tests.service.conftest import (
    PATIENT_ID,
    PATIENT_NAME,
    bad_inputs,
    make_client,
    phantom,
    phantom_dicom,
)

DICOM = {"Content-Type": "application/dicom"}


@pytest.fixture(scope="module")
def positive_dicom() -> bytes:
    return phantom_dicom(phantom(0, size=640))


def test_predict_contract(client: TestClient, positive_dicom: bytes) -> None:
    r = client.post("/v1/predict", content=positive_dicom, headers=DICOM)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == r.headers["x-request-id"]
    assert body["model"]["resolution"] == 256  # the configured default
    assert "synthetic" in body["model"]["intended_use"].lower()
    assert 0.0 <= body["probability"] <= 1.0
    # A fresh site-a phantom: what the model was trained on, so the answer stands.
    assert body["assessment"] == {"status": "assessed", "reasons": []}
    ood = body["ood"]
    assert ood["method"] == "mahalanobis" and ood["in_distribution"] is True
    assert 0 <= ood["score"] <= ood["threshold"]
    assert body["positive"] == (body["probability"] >= body["threshold"])
    assert body["image"]["rows"] == 640 and body["image"]["columns"] == 640
    spacing = phantom(0, size=640).metadata["pixel_spacing_mm"]
    assert body["image"]["pixel_spacing_mm"] == [spacing, spacing]
    assert body["image"]["voi_fallback"] is None
    mask = decode_mask_png(base64.b64decode(body["saliency"]["mask"]["data"]))
    assert mask.shape == (640, 640) and mask.any()
    for box in body["boxes"]:
        assert 0 <= box["x_min"] <= box["x_max"] < 640 and 0 <= box["y_min"] <= box["y_max"] < 640
        assert mask[box["y_min"] : box["y_max"] + 1, box["x_min"] : box["x_max"] + 1].any()
    assert set(body["timings_ms"]) == {
        "decode", "gate", "preprocess", "queue", "inference", "postprocess", "total"
    }  # fmt: skip
    assert body["saliency"]["heatmap"] is None


def test_rle_mask_equals_png_mask_and_heatmap(client: TestClient, positive_dicom: bytes) -> None:
    png = client.post("/v1/predict?resolution=128", content=positive_dicom, headers=DICOM).json()
    rle = client.post(
        "/v1/predict?resolution=128&mask_format=rle&heatmap=true",
        content=positive_dicom,
        headers=DICOM,
    ).json()
    a = decode_mask_png(base64.b64decode(png["saliency"]["mask"]["data"]))
    m = rle["saliency"]["mask"]
    b = decode_coco_rle({"size": [m["rows"], m["columns"]], "counts": m["counts"]})
    assert np.array_equal(a, b)
    assert rle["probability"] == pytest.approx(png["probability"], abs=1e-6)
    heat = rle["saliency"]["heatmap"]
    assert heat["rows"] == 640 and base64.b64decode(heat["data"]).startswith(b"\x89PNG")


def test_multipart_upload_and_probability_only(client: TestClient, positive_dicom: bytes) -> None:
    r = client.post("/v1/predict?explain=false", files={"file": ("x.dcm", positive_dicom)})
    assert r.status_code == 200, r.text
    assert r.json()["saliency"] is None and r.json()["boxes"] == []
    r = client.post("/v1/predict", files={"other": ("x.dcm", positive_dicom)})
    assert r.status_code == 400 and "field `file`" in r.json()["error"]["message"]


def test_compare_runs_each_resolution(client: TestClient, positive_dicom: bytes) -> None:
    r = client.post("/v1/compare?resolutions=256,128", content=positive_dicom, headers=DICOM)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["model"]["resolution"] for x in results] == [256, 128]
    single = client.post("/v1/predict?resolution=128", content=positive_dicom, headers=DICOM)
    assert results[1]["probability"] == pytest.approx(single.json()["probability"], abs=1e-6)
    r = client.post("/v1/compare?resolutions=128,999", content=positive_dicom, headers=DICOM)
    assert r.status_code == 422 and "128, 256" in r.json()["error"]["message"]
    r = client.post("/v1/compare?resolutions=12a", content=positive_dicom, headers=DICOM)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter"


def test_models_lists_intended_use_and_metrics(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["default_resolution"] == 256
    assert [m["resolution"] for m in body["models"]] == [128, 256]
    for m in body["models"]:
        assert m["backend"] == "onnxruntime:CPUExecutionProvider"
        assert "not for clinical use" in m["intended_use"].lower()
        assert "test_site_a" in m["metrics"] and len(m["sha256"]) == 64
        calibration, ood = m["calibration"], m["ood"]
        assert calibration["method"] == "temperature" and calibration["temperature"] > 0
        ece = calibration["ece"]["test_site_a"]
        assert 0 <= ece["before"] <= 1 and 0 <= ece["after"] <= 1 and ece["n"] > 0
        assert ood["method"] == "mahalanobis" and ood["threshold"] > 0
        assert "conformal" in ood["threshold_rule"] and "validation" in ood["flagged"]
        # The calibrated operating point: the decision is the uncalibrated one, moved.
        assert 0 < m["threshold"] < 1


@pytest.mark.parametrize("name", list(bad_inputs()))
def test_bad_inputs_get_their_4xx_and_no_identifiers(client: TestClient, name: str) -> None:
    data, status, code = bad_inputs()[name]
    r = client.post("/v1/predict", content=data, headers=DICOM)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["request_id"] == r.headers["x-request-id"]
    assert PATIENT_NAME.split("^")[0] not in r.text and PATIENT_ID not in r.text
    assert "Traceback" not in r.text
    assert client.get("/healthz").status_code == 200


def test_request_errors(client: TestClient, positive_dicom: bytes) -> None:
    r = client.post("/v1/predict?resolution=300", content=positive_dicom, headers=DICOM)
    assert r.status_code == 422
    assert r.json()["error"]["message"].count("128, 256") == 1
    r = client.post("/v1/predict", content=positive_dicom, headers={"Content-Type": "image/png"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = client.post("/v1/predict", content=b"", headers=DICOM)
    assert r.status_code == 400
    r = client.post("/v1/predict?method=eigencam", content=positive_dicom, headers=DICOM)
    assert r.status_code == 422 and "torch" in r.json()["error"]["message"]
    r = client.post("/v1/predict?mask_format=jpeg", content=positive_dicom, headers=DICOM)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter"
    assert "jpeg" not in r.json()["error"]["message"]  # the value is not echoed
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/v1/predict")
    assert r.status_code == 405


def test_upload_limit_and_api_keys(models_dir: Path, positive_dicom: bytes) -> None:
    with make_client(models_dir, max_upload_mb=0.1, api_keys="k1,k2-secret") as c:
        assert c.get("/healthz").status_code == 200  # open
        assert c.get("/readyz").status_code == 200
        r = c.post("/v1/predict", content=positive_dicom, headers=DICOM)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        bad = {**DICOM, "X-API-Key": "k1-wrong"}
        assert c.post("/v1/predict", content=positive_dicom, headers=bad).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer k2-secret"}).status_code == 200
        ok = {**DICOM, "Authorization": "Bearer k1"}
        r = c.post("/v1/predict", content=positive_dicom, headers=ok)
        assert r.status_code == 413 and "0.1 MB" in r.json()["error"]["message"]

        # A streamed body without Content-Length is cut off once it passes the limit.
        def chunks():  # type: ignore[no-untyped-def]
            for _ in range(100):
                yield b"\0" * 65536

        r = c.post("/v1/predict", content=chunks(), headers=ok)
        assert r.status_code == 413
        assert "k2-secret" not in json.dumps(c.get("/v1/models", headers=ok).json())


def test_metrics_after_traffic(client: TestClient, positive_dicom: bytes) -> None:
    client.post("/v1/predict?resolution=128", content=positive_dicom, headers=DICOM)
    client.post("/v1/predict", content=b"garbage" * 100, headers=DICOM)
    client.post("/v1/predict?resolution=128", content=pydicom_file("CT_small.dcm"), headers=DICOM)
    client.post("/v1/predict?resolution=128", content=SIIM_FILE.read_bytes(), headers=DICOM)
    client.get("/v1/no-such-endpoint-xyz")
    text = client.get("/metrics").text
    assert "no-such-endpoint-xyz" not in text  # client-chosen paths never become labels
    for series in (
        'sharpcxr_assessments_total{reason="none",resolution="128",status="assessed"}',
        'sharpcxr_assessments_total{reason="unsupported_modality",resolution="128",'
        'status="refused"}',
        'sharpcxr_assessments_total{reason="out_of_distribution",resolution="128",'
        'status="not_assessable"}',
        'sharpcxr_stage_duration_seconds_count{resolution="128",stage="gate"}',
        'sharpcxr_requests_total{endpoint="other",resolution="none",status="404"}',
        'sharpcxr_request_duration_seconds_count{endpoint="/v1/predict",resolution="128",status="200"}',
        'sharpcxr_requests_total{endpoint="/v1/predict",resolution="128",status="200"}',
        'sharpcxr_stage_duration_seconds_count{resolution="128",stage="inference"}',
        'sharpcxr_stage_duration_seconds_count{resolution="128",stage="decode"}',
        'sharpcxr_batch_size_count{resolution="128"}',
        'sharpcxr_queue_depth{resolution="128"}',
        'sharpcxr_errors_total{code="not_dicom",endpoint="/v1/predict"}',
        'sharpcxr_model_info{backend="onnxruntime:CPUExecutionProvider",name="sharpcxr-test-compact"',
    ):
        assert series in text, series
    assert PATIENT_ID not in text


def test_openapi_document_is_current() -> None:
    from service.openapi import DEFAULT_PATH, openapi_document, render

    committed = (Path(__file__).resolve().parents[2] / DEFAULT_PATH).read_text()
    assert render(openapi_document()) == committed, "run `make openapi` and commit the result"


def test_request_deadline_gives_503_with_retry_after(
    models_dir: Path, positive_dicom: bytes
) -> None:
    with make_client(models_dir, request_timeout_s=0.001) as c:
        r = c.post("/v1/predict", content=positive_dicom, headers=DICOM)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "deadline_exceeded"
        assert int(r.headers["retry-after"]) >= 1
        assert c.get("/healthz").status_code == 200


def _lateral_chest() -> bytes:
    """A real chest radiograph (NEMA WG-04 RG1) with ViewPosition rewritten to LL."""
    return rewrite("RG1_UNCR.dcm", ViewPosition="LL", PatientName=PATIENT_NAME,
                   PatientID=PATIENT_ID)  # fmt: skip


def test_gate_refuses_non_chest_and_lateral_images_by_default(client: TestClient) -> None:
    for data, code in (
        (pydicom_file("CT_small.dcm"), "unsupported_modality"),
        (pydicom_file("RG3_UNCR.dcm"), "not_chest"),
        (_lateral_chest(), "lateral_view"),
    ):
        r = client.post("/v1/predict?resolution=128", content=data, headers=DICOM)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == code and "SHARPCXR_GATE=flag" in error["message"]
        assert PATIENT_ID not in r.text


def test_gate_flag_mode_answers_with_not_assessable(models_dir: Path) -> None:
    with make_client(models_dir, gate="flag") as c:
        r = c.post("/v1/predict?resolution=128", content=_lateral_chest(), headers=DICOM)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["assessment"]["status"] == "not_assessable" and body["positive"] is None
        codes = [reason["code"] for reason in body["assessment"]["reasons"]]
        assert codes[0] == "lateral_view"
        # A real radiograph is also unlike the phantoms the model was trained on.
        assert "out_of_distribution" in codes and body["ood"]["in_distribution"] is False
        assert 0 <= body["probability"] <= 1  # still shown, labelled by the assessment


def test_gate_off_assesses_everything_but_still_scores_ood(models_dir: Path) -> None:
    with make_client(models_dir, gate="off") as c:
        r = c.post("/v1/predict?resolution=128", content=_lateral_chest(), headers=DICOM)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["assessment"] == {"status": "assessed", "reasons": []}
        assert body["positive"] == (body["probability"] >= body["threshold"])
        assert body["ood"]["in_distribution"] is False  # measured, not acted upon
        assert body["timings_ms"]["gate"] == 0


def test_real_radiograph_is_out_of_distribution_even_when_assessable(client: TestClient) -> None:
    """SIIM-ACR's CR chest passes every header check; only the model's own OOD score says
    its answer means nothing, and the response says so."""
    r = client.post("/v1/predict?resolution=128", content=SIIM_FILE.read_bytes(), headers=DICOM)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ood"]["in_distribution"] is False
    assert body["ood"]["score"] > body["ood"]["threshold"]
    assert body["assessment"]["status"] == "not_assessable" and body["positive"] is None
    assert [x["code"] for x in body["assessment"]["reasons"]] == ["out_of_distribution"]
