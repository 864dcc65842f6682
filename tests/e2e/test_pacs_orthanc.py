"""End to end against a real PACS: Orthanc (with its DICOMweb plugin) sends chest DICOMs
to a real sharpcxr server by C-STORE and by STOW-RS; sharpcxr's SEG, SR and GSPS come back
into the same study in Orthanc by STOW-RS and by C-STORE, found there with QIDO-RS and read
back with highdicom/pydicom to the same mask, probability and boxes as the JSON answer."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from imaging.rle import decode_coco_rle
from tests.conftest import FAKE_MONO1_FILE, pydicom_file
from tests.e2e.conftest import Server
from tests.e2e.orthanc import SKIP_REASON, Orthanc, find_orthanc
from tests.service.conftest import PATIENT_ID, PATIENT_NAME, phantom, phantom_dicom
from tests.service.pacs.readback import (
    dciodvfy_errors,
    errors_not_from_source,
    gsps_boxes,
    seg_mask,
    sr_findings,
)

pytestmark = pytest.mark.skipif(find_orthanc() is None, reason=SKIP_REASON)

SEG, SR, GSPS = (
    "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.11.1",
)
API_KEY = "orthanc-e2e-key"


class Pacs:
    """Orthanc and sharpcxr wired both ways."""

    def __init__(self, orthanc: Orthanc, server: Server) -> None:
        self.orthanc = orthanc
        self.server = server

    def results(self, study_uid: str, timeout_s: float = 120) -> dict[str, Any]:
        """The sharpcxr job of the study's one source, once finished and delivered."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            r = httpx.get(f"{self.server.url}/v1/studies/{study_uid}/results",
                          headers={"x-api-key": API_KEY}, timeout=10)  # fmt: skip
            if r.status_code == 200:
                [job] = r.json()["instances"]
                delivered = job["deliveries"] and all(
                    d["state"] == "delivered" for d in job["deliveries"]
                )
                if job["state"] not in ("queued", "processing") and (
                    delivered or job["state"] != "done"
                ):
                    return dict(job)
            time.sleep(0.2)
        raise AssertionError(f"no finished job for the study:\n{self.server.log()[-3000:]}")


@pytest.fixture(scope="module")
def pacs(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    orthanc = Orthanc(workdir=tmp_path_factory.mktemp("orthanc")).start()
    dicom_port = _free_port()
    server = Server(
        models_dir,
        tmp_path_factory.mktemp("sharpcxr") / "service.log",
        default_resolution="256",
        api_keys=API_KEY,
        dicom_port=str(dicom_port),
        dicom_allowed_aes="ORTHANC",
        # results go back both ways; Orthanc keeps one copy per SOP Instance UID
        results_stow_url=orthanc.dicomweb_url,
        results_ae=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
        delivery_backoff_s="0.5",
    )
    orthanc.add_modality("sharpcxr", "SHARPCXR", "127.0.0.1", dicom_port)
    orthanc.add_dicomweb_server(
        "sharpcxr", f"{server.url}/dicomweb", http_headers={"X-API-Key": API_KEY}
    )
    try:
        yield Pacs(orthanc, server)
    finally:
        server.stop()
        orthanc.stop()


def _free_port() -> int:
    from tests.e2e.conftest import free_port

    return free_port()


def _sources() -> dict[str, bytes]:
    return {
        "phantom-positive": phantom_dicom(phantom(0, size=768)),
        "j2k-lossless-cr": pydicom_file("RG1_J2KR.dcm"),
        "monochrome1": FAKE_MONO1_FILE.read_bytes(),
    }


def _fresh_uids(data: bytes, salt: str) -> bytes:
    """The same file under new Study/Series/SOP Instance UIDs (pixel data untouched), so
    each case is a new instance to the job store, which keeps one job per SOP Instance."""
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, generate_uid(entropy_srcs=[salt, str(ds.get(keyword))]))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _send(pacs: Pacs, how: str, orthanc_id: str) -> None:
    if how == "c-store":
        answer = pacs.orthanc.store_to_modality("sharpcxr", [orthanc_id])
    else:
        answer = pacs.orthanc.stow_to_server("sharpcxr", [orthanc_id])
    assert answer is not None


HOWS = ("c-store", "stow-rs")


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("name", list(_sources()))
def test_results_come_back_into_the_study(pacs: Pacs, name: str, how: str) -> None:
    data = _fresh_uids(_sources()[name], how)
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    uploaded = pacs.orthanc.upload(data)
    _send(pacs, how, uploaded["ID"])

    job = pacs.results(source.StudyInstanceUID)
    assert job["state"] == "done", job
    assert job["source"] == ("dimse" if how == "c-store" else "stow")
    assert {d["destination"] for d in job["deliveries"]} == {"stow", "dimse"}

    # Found in Orthanc with QIDO-RS: the source plus SEG, SR and GSPS, each in a new series.
    found = pacs.orthanc.wait_for_instances(source.StudyInstanceUID, 4, timeout_s=60)
    qido = pacs.orthanc.qido_instances(source.StudyInstanceUID)
    assert len(qido) == 4 and len(found) == 4  # none twice
    by_class = {f.sop_class_uid: f for f in found}
    assert set(by_class) == {str(source.SOPClassUID), SEG, SR, GSPS}
    made = {o["sop_instance_uid"] for o in job["objects"]}
    assert {by_class[c].sop_instance_uid for c in (SEG, SR, GSPS)} == made
    series = {f.series_uid for f in found}
    assert len(series) == 4 and str(source.SeriesInstanceUID) in series

    objects = {c: pydicom.dcmread(io.BytesIO(pacs.orthanc.instance_file(by_class[c].orthanc_id)))
               for c in (SEG, SR, GSPS)}  # fmt: skip
    source_errors = dciodvfy_errors(data)
    for ds in objects.values():
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert source.SOPInstanceUID in _referenced(ds)
        assert errors_not_from_source(ds, source_errors) == []
        for element in ("PatientName", "PatientID"):
            assert str(ds.get(element, "")) == str(source.get(element, ""))

    result = job["result"]
    mask = decode_coco_rle(
        {"size": [source.Rows, source.Columns], "counts": result["saliency"]["mask"]["counts"]}
    )
    seg = seg_mask(objects[SEG])
    union = np.logical_or(seg, mask).sum()
    assert union == 0 or np.logical_and(seg, mask).sum() / union == 1.0  # IoU 1.0
    assert np.array_equal(seg, mask)
    findings = sr_findings(objects[SR])
    assert findings["probability"] == pytest.approx(result["probability"], abs=1e-6)
    boxes = [(b["x_min"], b["y_min"], b["x_max"], b["y_max"]) for b in result["boxes"]]
    assert findings["boxes"] == boxes and gsps_boxes(objects[GSPS]) == boxes
    if name == "phantom-positive":
        assert result["assessment"]["status"] == "assessed" and mask.any() and boxes
    else:  # real radiographs: the phantom-trained test models say they mean nothing here
        assert result["assessment"]["status"] == "not_assessable"
        assert findings["decision"] == "not_assessable"


def _referenced(ds: pydicom.Dataset) -> set[str]:
    found: set[str] = set()
    for element in ds.iterall():
        if element.keyword == "ReferencedSOPInstanceUID":
            found.add(str(element.value))
    return found


def test_no_patient_data_in_the_service_log(pacs: Pacs) -> None:
    log = pacs.server.log()
    assert PATIENT_NAME not in log and PATIENT_ID not in log
    sent = [_fresh_uids(data, how) for data in _sources().values() for how in HOWS]
    for data in sent:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        assert str(ds.SOPInstanceUID) not in log and str(ds.StudyInstanceUID) not in log
        if ds.get("PatientName"):
            assert str(ds.PatientName) not in log


def test_a_caller_not_on_the_allow_list_is_rejected(pacs: Pacs) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    port = int(pacs.orthanc.modalities["sharpcxr"][2])
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="SHARPCXR")
    assert assoc.is_rejected
    assert pacs.orthanc.echo("sharpcxr")  # Orthanc, on the list, is let in
