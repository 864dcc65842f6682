"""End to end: a real uvicorn server on loopback, real DICOM uploads over HTTP."""

from __future__ import annotations

import base64
import concurrent.futures
from pathlib import Path

import httpx
import numpy as np
import pytest

from imaging.localisation import mask_iou, percent_inside
from imaging.saliency import decode_mask_png
from tests.conftest import FAKE_MONO1_FILE, SIIM_FILE, pydicom_file
from tests.e2e.conftest import Server
from tests.service.conftest import PATIENT_ID, PATIENT_NAME, bad_inputs, phantom, phantom_dicom

DICOM = {"Content-Type": "application/dicom"}
LOSSLESS = {
    "explicit-le": "1.2.840.10008.1.2.1",
    "implicit-le": "1.2.840.10008.1.2",
    "deflate": "1.2.840.10008.1.2.1.99",
    "rle": "1.2.840.10008.1.2.5",
    "jpeg-ls-lossless": "1.2.840.10008.1.2.4.80",
    "jpeg-lossless-sv1": "1.2.840.10008.1.2.4.70",
    "j2k-lossless": "1.2.840.10008.1.2.4.90",
}


def post(server: Server, data: bytes, query: str = "", endpoint: str = "predict") -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{endpoint}{query}", content=data, headers=DICOM, timeout=60)


def mask_of(body: dict) -> np.ndarray:  # type: ignore[type-arg]
    return decode_mask_png(base64.b64decode(body["saliency"]["mask"]["data"]))


def test_transfer_syntaxes_give_the_same_answer(server: Server) -> None:
    ph = phantom(2, size=768)
    answers = {}
    for name, uid in LOSSLESS.items():
        r = post(server, phantom_dicom(ph, transfer_syntax=uid))
        assert r.status_code == 200, (name, r.text)
        assert r.json()["image"]["transfer_syntax_uid"] == uid
        answers[name] = r.json()
    reference = answers["explicit-le"]
    for name, body in answers.items():  # lossless: identical pixels, identical answers
        assert body["probability"] == pytest.approx(reference["probability"], abs=1e-6), name
        assert np.array_equal(mask_of(body), mask_of(reference)), name
    lossy = post(server, phantom_dicom(ph, transfer_syntax="1.2.840.10008.1.2.4.50", bits_stored=8))
    assert lossy.status_code == 200
    assert lossy.json()["probability"] == pytest.approx(reference["probability"], abs=0.05)


@pytest.mark.parametrize("name", ["siim", "fake-mono1", "RG1_UNCR.dcm", "RG1_J2KI.dcm"])
def test_real_fixtures(server: Server, name: str) -> None:
    """Real chest radiographs are decoded and explained in their own grid (real non-chest
    files, JPEG 2000 and 12-bit JPEG among them, go through the flag-mode server of
    test_gate_e2e.py)."""
    data = {"siim": SIIM_FILE, "fake-mono1": FAKE_MONO1_FILE}.get(name)
    body_bytes = data.read_bytes() if isinstance(data, Path) else pydicom_file(name)
    r = post(server, body_bytes, "?resolution=128&mask_format=rle")
    assert r.status_code == 200, r.text
    body = r.json()
    mask = body["saliency"]["mask"]
    assert (mask["rows"], mask["columns"]) == (body["image"]["rows"], body["image"]["columns"])
    assert sum(mask["counts"]) == mask["rows"] * mask["columns"]


def test_mask_and_boxes_land_on_the_true_pneumothorax(server: Server) -> None:
    hits, inside, chance = 0, [], []
    for i in range(6):
        ph = phantom(i, size=1024)
        body = post(server, phantom_dicom(ph), "?resolution=256").json()
        top = body["boxes"][0]  # highest saliency first
        region = ph.mask[top["y_min"] : top["y_max"] + 1, top["x_min"] : top["x_max"] + 1]
        hits += bool(region.any())
        inside.append(percent_inside(mask_of(body), ph.mask))
        chance.append(100 * ph.mask.mean())
    # Compact demo-sized model at 256 px: its top box overlaps the pneumothorax, and its
    # mask lies inside it far more often than a mask placed at random would.
    assert hits >= 5
    assert np.mean(inside) >= 3 * np.mean(chance)


def test_torch_backend_server_agrees_with_onnx(
    server: Server, models_dir: Path, tmp_path: Path
) -> None:
    torch_server = Server(
        models_dir, tmp_path / "torch.log", backend="torch", resolutions="128,256"
    )
    try:
        info = httpx.get(torch_server.url + "/v1/models").json()["models"]
        assert {m["backend"] for m in info} == {"torch:cpu"}
        assert "gradcam++" in info[0]["saliency_methods"]
        for i in range(4):
            data = phantom_dicom(phantom(i, size=640, positive=i != 3))
            a = post(server, data, "?resolution=256").json()
            b = post(torch_server, data, "?resolution=256").json()
            assert abs(a["probability"] - b["probability"]) <= 1e-4
            assert mask_iou(mask_of(a), mask_of(b)) >= 0.95
        r = post(torch_server, data, "?resolution=128&method=hirescam")
        assert r.status_code == 200 and r.json()["saliency"]["method"] == "hirescam"
        assert post(server, data, "?method=hirescam").status_code == 422
    finally:
        torch_server.stop()


def test_every_bad_input_is_refused_and_the_service_keeps_serving(server: Server) -> None:
    good = phantom_dicom(phantom(1, size=512))
    for name, (data, status, code) in bad_inputs().items():
        r = post(server, data)
        assert r.status_code == status, (name, r.text)
        assert r.json()["error"]["code"] == code, name
        assert post(server, good).status_code == 200, f"not serving after {name}"
    r = httpx.post(f"{server.url}/v1/predict", content=good, headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_overload_gives_503_with_retry_after_never_500(models_dir: Path, tmp_path: Path) -> None:
    busy = Server(models_dir, tmp_path / "busy.log", max_queue="2", max_batch_size="2",
                  decode_workers="1")  # fmt: skip
    data = phantom_dicom(phantom(0, size=1024))
    try:
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            responses = list(pool.map(lambda _: post(busy, data), range(64)))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503}, statuses
        refused = [r for r in responses if r.status_code == 503]
        assert refused and statuses.count(200) >= 1
        for r in refused:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "overloaded"
        assert post(busy, data).status_code == 200  # recovered
        metrics = httpx.get(busy.url + "/metrics").text
        assert 'sharpcxr_errors_total{code="overloaded",endpoint="/v1/predict"}' in metrics
    finally:
        busy.stop()


def test_metrics_and_logs_after_traffic(server: Server) -> None:
    data = phantom_dicom(phantom(4, size=512))
    assert post(server, data, "?resolution=128").status_code == 200
    assert post(server, data, "?resolutions=128,256", endpoint="compare").status_code == 200
    text = httpx.get(server.url + "/metrics").text
    for resolution in ("128", "256"):
        assert (
            f'sharpcxr_request_duration_seconds_count{{endpoint="/v1/predict",'
            f'resolution="{resolution}",status="200"}}' in text
        )
        for stage in ("decode", "gate", "preprocess", "queue", "inference", "postprocess"):
            assert f'sharpcxr_stage_duration_seconds_count{{resolution="{resolution}",' \
                   f'stage="{stage}"}}' in text  # fmt: skip
        assert f'sharpcxr_batch_size_count{{resolution="{resolution}"}}' in text
    assert 'endpoint="/v1/compare",resolution="multi",status="200"' in text


def test_patient_identifiers_never_leave_the_service(server: Server) -> None:
    """Runs last in this module: every request above carried PatientName/PatientID."""
    data = phantom_dicom(phantom(3, size=512))
    r = post(server, data, "?heatmap=true")
    assert r.status_code == 200
    secrets = (PATIENT_ID, PATIENT_NAME, PATIENT_NAME.split("^")[0], PATIENT_NAME.split("^")[1])
    texts = [r.text, httpx.get(server.url + "/metrics").text, server.log()]
    for text in texts:
        for secret in secrets:
            assert secret not in text
    log = server.log()
    assert '"request_id"' in log and '"status": 200' in log  # the log is there and structured
    assert "Traceback" not in log


def test_a_tampered_model_file_stops_the_start_naming_it(models_dir: Path, tmp_path: Path) -> None:
    import json
    import os
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "models"
    shutil.copytree(models_dir, copy)
    entry = json.loads((copy / "manifest.json").read_text())["models"][0]
    onnx = copy / entry["files"]["onnx"]["path"]
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARPCXR_")}
    env["SHARPCXR_MODELS_DIR"] = str(copy)
    done = subprocess.run(
        [sys.executable, "-m", "service", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert onnx.name in done.stderr and "does not match the manifest" in done.stderr
    assert "Traceback" not in done.stderr
