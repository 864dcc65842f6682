"""The viewer's API through the real app (TestClient): ``/v1/display``, the worklist
(``GET /v1/jobs``, ``/v1/jobs/{id}/display``), retention of received instances, the
saliency map, and the static viewer and API docs pages."""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import cv2
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from fastapi.testclient import TestClient

from imaging.dicom import read_dicom
from service.pacs.related import encode_related
from service.pacs.store import JobStore, NewJob
from service.routes.viewer import VIEWER_DIR
from tests.conftest import FAKE_MONO1_FILE, pydicom_file, rewrite
from tests.service.conftest import bad_inputs, make_client, phantom, phantom_dicom

DICOM = {"Content-Type": "application/dicom"}
DICOM_ANSWER = {"Accept": 'multipart/related; type="application/dicom"'}
#: the viewer client's heatmap_max_side: below the test images' sides, so maps shrink
MAP_SIDE = 256
KEY = {"X-API-Key": "viewer-key"}


def display_values(content: bytes, rows: int, columns: int) -> npt.NDArray[np.float64]:
    """A display body (uncompressed) as display values in [0, 1], ``(rows, columns)``."""
    codes = np.frombuffer(content, dtype="<u2")
    assert codes.size == rows * columns
    return codes.reshape(rows, columns).astype(np.float64) / 65535.0


def reshaped(data: bytes, **elements: Any) -> bytes:
    """``data`` with header elements set; ``columns=n`` also crops the pixels to n."""
    ds = pydicom.dcmread(io.BytesIO(data))
    columns = elements.pop("columns", None)
    if columns is not None:
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, :columns]).tobytes()
        ds.Columns = columns
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def stow(client: TestClient, parts: list[bytes], headers: dict[str, str] | None = None) -> Any:
    content_type, body = encode_related(parts)
    return client.post(
        "/dicomweb/studies", content=body, headers={"content-type": content_type, **(headers or {})}
    )


def wait_jobs(client: TestClient, count: int, timeout_s: float = 90) -> list[dict[str, Any]]:
    """The worklist once ``count`` jobs are in it and none is queued or processing."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = client.get("/v1/jobs").json()["jobs"]
        if len(jobs) >= count and all(j["state"] not in ("queued", "processing") for j in jobs):
            return list(jobs)
        time.sleep(0.2)
    raise AssertionError(f"jobs not finished in {timeout_s} s: {jobs}")


@pytest.fixture(scope="module")
def viewer_client(models_dir: Path) -> Iterator[TestClient]:
    with make_client(models_dir, default_resolution=256, heatmap_max_side=MAP_SIDE) as c:
        yield c


@pytest.fixture(scope="module")
def phantom640() -> bytes:
    return phantom_dicom(phantom(0, size=640))


def test_display_is_the_display_chain_in_the_original_grid(
    viewer_client: TestClient, phantom640: bytes
) -> None:
    r = viewer_client.post("/v1/display", content=phantom640, headers=DICOM)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["cache-control"] == "no-store"
    ds = pydicom.dcmread(io.BytesIO(phantom640), stop_before_pixels=True)
    rows, columns = int(r.headers["x-image-rows"]), int(r.headers["x-image-columns"])
    assert (rows, columns) == (ds.Rows, ds.Columns) == (640, 640)  # not a model's 128/256
    spacing = [float(v) for v in r.headers["x-pixel-spacing-mm"].split(",")]
    assert spacing == pytest.approx([float(v) for v in ds.PixelSpacing], abs=1e-9)
    values = display_values(r.content, rows, columns)
    expected = read_dicom(phantom640).pixels
    np.testing.assert_allclose(values, expected, rtol=0, atol=1 / 65535)
    assert values.std() > 0.05  # an image, not a constant


def test_display_inverts_monochrome1_as_read_dicom_does(viewer_client: TestClient) -> None:
    data = FAKE_MONO1_FILE.read_bytes()
    ds = pydicom.dcmread(FAKE_MONO1_FILE)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    r = viewer_client.post("/v1/display", content=data, headers=DICOM)
    assert r.status_code == 200, r.text
    values = display_values(r.content, ds.Rows, ds.Columns)
    np.testing.assert_allclose(values, read_dicom(data).pixels, rtol=0, atol=1 / 65535)
    # MONOCHROME1: high stored values are dark, so display runs against the stored values
    stored = ds.pixel_array.astype(np.float64)
    assert np.corrcoef(values.ravel(), stored.ravel())[0, 1] < -0.99


def test_display_is_sent_uncompressed_whatever_the_client_accepts(
    viewer_client: TestClient, phantom640: bytes
) -> None:
    raw_size = 640 * 640 * 2
    for accept in ("identity", "gzip, deflate, br", "*"):
        with viewer_client.stream(
            "POST", "/v1/display", content=phantom640, headers={**DICOM, "Accept-Encoding": accept}
        ) as r:
            assert r.status_code == 200 and "content-encoding" not in r.headers
            assert len(b"".join(r.iter_raw())) == raw_size


@pytest.mark.parametrize("name", list(bad_inputs()))
def test_display_refuses_bad_input_as_predict_does(viewer_client: TestClient, name: str) -> None:
    data, status, code = bad_inputs()[name]
    predicted = viewer_client.post("/v1/predict", content=data, headers=DICOM)
    shown = viewer_client.post("/v1/display", content=data, headers=DICOM)
    assert (shown.status_code, predicted.status_code) == (status, status), shown.text
    assert shown.json()["error"]["code"] == predicted.json()["error"]["code"] == code
    assert shown.json()["error"]["message"] and "Traceback" not in shown.text


def test_display_shows_images_the_gate_refuses(viewer_client: TestClient) -> None:
    lateral = rewrite("RG1_UNCR.dcm", ViewPosition="LL")
    for data, code in (
        (pydicom_file("CT_small.dcm"), "unsupported_modality"),
        (pydicom_file("RG3_UNCR.dcm"), "not_chest"),
        (lateral, "lateral_view"),
    ):
        r = viewer_client.post("/v1/predict?resolution=128", content=data, headers=DICOM)
        assert r.status_code == 422 and r.json()["error"]["code"] == code
        r = viewer_client.post("/v1/display", content=data, headers=DICOM)
        assert r.status_code == 200, r.text
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        assert (int(r.headers["x-image-rows"]), int(r.headers["x-image-columns"])) == (
            ds.Rows,
            ds.Columns,
        )
        assert len(r.content) == ds.Rows * ds.Columns * 2


def test_api_key_guards_viewer_endpoints_but_not_pages(models_dir: Path) -> None:
    data = phantom_dicom(phantom(10, size=256))
    with make_client(models_dir, default_resolution=256, api_keys="viewer-key") as c:
        assert stow(c, [data]).status_code == 401
        assert stow(c, [data], KEY).status_code == 200
        job_id = c.get("/v1/jobs", headers=KEY).json()["jobs"][0]["job_id"]
        for method, path, body in (
            ("POST", "/v1/display", data),
            ("GET", "/v1/jobs", None),
            ("GET", f"/v1/jobs/{job_id}/display", None),
        ):
            bare = c.request(method, path, content=body, headers=DICOM)
            assert bare.status_code == 401, path
            assert bare.json()["error"]["code"] == "unauthorized", path
            keyed = c.request(method, path, content=body, headers={**DICOM, **KEY})
            assert keyed.status_code == 200, (path, keyed.text)
        for path in ("/viewer/", "/viewer/js/app.js", "/docs", "/redoc"):
            assert c.get(path).status_code == 200, path


def test_viewer_pages_redirects_and_no_traversal(viewer_client: TestClient) -> None:
    r = viewer_client.get("/viewer/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.text == (VIEWER_DIR / "index.html").read_text()
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    for path in ("/viewer", "/"):
        r = viewer_client.get(path, follow_redirects=False)
        assert r.status_code in (301, 302, 307, 308), path
        assert urlsplit(r.headers["location"]).path == "/viewer/", path
    r = viewer_client.get("/viewer/js/app.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    # The encoded dots do reach the files (a ".." that stays inside is served) ...
    r = viewer_client.get("/viewer/js/%2e%2e/index.html")
    assert r.status_code == 200 and r.text == (VIEWER_DIR / "index.html").read_text()
    # ... and one that leaves the viewer's folder is not.
    for path in (
        "/viewer/%2e%2e/app.py",
        "/viewer/..%2fapp.py",
        "/viewer/%2e%2e%2fsettings.py",
        "/viewer/%2e%2e/routes/viewer.py",
        "/viewer/js/%2e%2e/%2e%2e/app.py",
    ):
        r = viewer_client.get(path)
        assert r.status_code == 404, path
        assert "def create_app" not in r.text and "import " not in r.text, path


REFERENCE = re.compile(r"""(?:\bsrc|\bhref|\bspec-url)\s*=\s*["']([^"']+)["']|\burl:\s*'([^']+)'""")


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/viewer/"])
def test_pages_reference_only_same_origin_assets(viewer_client: TestClient, page: str) -> None:
    html = viewer_client.get(page).text
    references = [a or b for a, b in REFERENCE.findall(html)]
    assert references, "no asset found: the pattern no longer matches the page"
    for ref in references:
        parts = urlsplit(ref)
        assert not parts.scheme and not parts.netloc and not ref.startswith("//"), ref
        url = urljoin(f"http://testserver{page}", ref)
        assert viewer_client.get(urlsplit(url).path).status_code == 200, ref
    assert "http://" not in html and "https://" not in html
    if page == "/docs":
        assert '"validatorUrl": null' in html  # no badge asking validator.swagger.io


def test_vendored_licences_are_shipped() -> None:
    for name in ("swagger-ui", "redoc"):
        licence = VIEWER_DIR / "vendor" / name / "LICENSE"
        assert licence.is_file() and licence.stat().st_size > 100, licence


def test_saliency_map_png_on_request(viewer_client: TestClient, phantom640: bytes) -> None:
    data = reshaped(phantom640, columns=512)  # 640 x 512: not square, larger than MAP_SIDE
    r = viewer_client.post("/v1/predict?saliency_map=true", content=data, headers=DICOM)
    assert r.status_code == 200, r.text
    body = r.json()
    block = body["saliency"]["map"]
    png = base64.b64decode(block["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[24:26] == bytes([8, 0])  # 8-bit gray
    sal = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert sal is not None and sal.dtype == np.uint8 and sal.ndim == 2
    rows, columns = body["image"]["rows"], body["image"]["columns"]
    assert (rows, columns) == (640, 512)
    assert sal.shape == (block["rows"], block["columns"])
    assert max(sal.shape) <= MAP_SIDE and max(sal.shape) == MAP_SIDE  # downscaled to fit
    assert abs(sal.shape[1] / sal.shape[0] - columns / rows) <= 1 / sal.shape[0]
    # The brightest point, stretched back over the original grid, lies in the first box.
    py, px = np.unravel_index(int(sal.argmax()), sal.shape)
    sy, sx = rows / sal.shape[0], columns / sal.shape[1]
    y, x = (py + 0.5) * sy, (px + 0.5) * sx
    box = body["boxes"][0]
    assert (
        box["x_min"] - sx <= x <= box["x_max"] + sx and box["y_min"] - sy <= y <= box["y_max"] + sy
    )

    r = viewer_client.post("/v1/predict", content=data, headers=DICOM)
    assert r.status_code == 200 and r.json()["saliency"]["map"] is None
    r = viewer_client.post(
        "/v1/predict?saliency_map=true", content=data, headers={**DICOM, **DICOM_ANSWER}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("multipart/related")


def test_worklist_lists_jobs_newest_first_with_their_answers(models_dir: Path) -> None:
    first = phantom_dicom(phantom(11, size=384))
    second = phantom_dicom(phantom(12, size=384, positive=False))
    lateral = reshaped(phantom_dicom(phantom(13, size=384)), ViewPosition="LL")
    with make_client(models_dir, default_resolution=256) as c:
        for data in (first, second, lateral):  # one request each: distinct receive times
            assert stow(c, [data]).status_code == 200
        jobs = wait_jobs(c, 3)
        uids = [pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID for d in (lateral, second, first)]
        assert [j["sop_instance_uid"] for j in jobs] == uids
        assert [j["state"] for j in jobs] == ["refused", "done", "done"]
        assert jobs[0]["error"]["code"] == "lateral_view" and jobs[0]["probability"] is None
        for summary in jobs[1:]:
            full = c.get(f"/v1/jobs/{summary['job_id']}").json()
            result = full["result"]
            assert summary["has_image"] is True and summary["error"] is None
            assert summary["probability"] == result["probability"]
            assert summary["positive"] == result["positive"]
            assert summary["threshold"] == result["threshold"]
            assert summary["assessment"] == result["assessment"]["status"]
            assert summary["resolution"] == result["model"]["resolution"] == 256
            assert summary["reasons"] == [x["code"] for x in result["assessment"]["reasons"]]

        done = c.get("/v1/jobs?state=done").json()["jobs"]
        assert [j["job_id"] for j in done] == [j["job_id"] for j in jobs[1:]]
        assert [j["job_id"] for j in c.get("/v1/jobs?limit=1").json()["jobs"]] == [
            jobs[0]["job_id"]
        ]
        newest_done = c.get("/v1/jobs?state=done&limit=1").json()["jobs"]
        assert [j["job_id"] for j in newest_done] == [jobs[1]["job_id"]]
        for query in ("limit=0", "limit=501", "state=bogus"):
            r = c.get(f"/v1/jobs?{query}")
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter"

        # The held instance through the display chain: /v1/display's own answer.
        for data, summary in ((second, jobs[1]), (lateral, jobs[0])):  # refused: shown too
            held = c.get(f"/v1/jobs/{summary['job_id']}/display")
            direct = c.post("/v1/display", content=data, headers=DICOM)
            assert held.status_code == direct.status_code == 200, held.text
            assert held.content == direct.content and len(held.content) == 384 * 384 * 2
            for name in ("x-image-rows", "x-image-columns", "x-pixel-spacing-mm", "x-voi"):
                assert held.headers[name] == direct.headers[name], name
            assert held.headers["cache-control"] == "no-store"
        for path in (f"/v1/jobs/{'0' * 32}/display", f"/v1/jobs/{'0' * 32}"):
            r = c.get(path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
        assert c.get("/v1/jobs/not-a-job/display").status_code == 422


def test_no_retention_drops_the_image_once_finished(models_dir: Path) -> None:
    data = phantom_dicom(phantom(14, size=256))
    with make_client(models_dir, default_resolution=256, retain_received_hours=0) as c:
        assert stow(c, [data]).status_code == 200
        [job] = wait_jobs(c, 1)
        assert job["state"] == "done" and job["has_image"] is False
        r = c.get(f"/v1/jobs/{job['job_id']}/display")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert "SHARPCXR_RETAIN_RECEIVED_HOURS" in r.json()["error"]["message"]
        assert c.get(f"/v1/jobs/{job['job_id']}").json()["result"] is not None


def new_job(uid: str) -> NewJob:
    return NewJob(
        uid, "1.2.840.10008.5.1.4.1.1.1", "1.2.3", "1.2.3.4", "stow", f"bytes-{uid}".encode()
    )


def test_store_keeps_finished_instances_for_the_retention_only(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}", retain_received_s=3600)
    finished, _ = store.add(new_job("1.1"))
    processing, _ = store.add(new_job("1.2"))
    queued, _ = store.add(new_job("1.3"))
    claimed = [store.claim(), store.claim()]
    assert [j.id for j in claimed if j] == [finished, processing]
    store.finish(finished, response_json=None, objects=[], destinations=[])
    assert store.received(finished) == b"bytes-1.1"  # kept after the job is done
    assert store.purge_received() == 0  # within the retention
    assert store.purge_received(now=time.time() + 7200) == 1
    assert store.received(finished) is None
    held = {j["id"]: bool(j["has_image"]) for j in store.recent_jobs(10)}
    assert held == {finished: False, processing: True, queued: True}
    # Unfinished jobs still need their instance, however old they are.
    assert store.purge_received(now=time.time() + 10**9) == 0
    assert store.received(processing) == b"bytes-1.2" and store.received(queued) == b"bytes-1.3"
    job = store.job(finished)
    assert job is not None and job["state"] == "done"
    store.close()


def test_purge_goes_in_batches_and_covers_refused_and_failed_jobs(tmp_path: Path) -> None:
    from service.pacs.store import PURGE_BATCH

    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}", retain_received_s=60)
    count = PURGE_BATCH * 2 + 7
    ids = [store.add(new_job(f"2.{i}"))[0] for i in range(count)]
    for i, job_id in enumerate(ids):
        claimed = store.claim()
        assert claimed is not None and claimed.id == job_id
        if i % 3 == 0:
            store.refuse(job_id, "not_chest", "not a chest")
        elif i % 3 == 1:
            store.refuse(job_id, "job_failed", "failed", failed=True)
        else:
            store.finish(job_id, response_json=None, objects=[], destinations=[])
    assert store.purge_received(now=time.time() + 120) == count
    assert all(store.received(job_id) is None for job_id in ids)
    store.close()


def test_answers_about_images_are_never_cached(viewer_client: TestClient) -> None:
    predicted = viewer_client.post("/v1/predict", content=phantom_dicom(phantom(0, size=256)),
                                   headers=DICOM)  # fmt: skip
    assert predicted.status_code == 200 and predicted.headers["cache-control"] == "no-store"
    assert viewer_client.get("/v1/jobs").headers["cache-control"] == "no-store"
    assert "no-store" not in viewer_client.get("/healthz").headers.get("cache-control", "")
