"""The C-STORE SCP and C-STORE delivery with real pynetdicom peers on loopback."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    SegmentationStorage,
    Verification,
)

from tests.conftest import pydicom_file
from tests.service.conftest import make_client, phantom, phantom_dicom
from tests.service.pacs.peers import ResultReceiver, c_store, free_port
from tests.service.pacs.test_pacs_api import header, wait_finished


@pytest.fixture(scope="module")
def scp_client(models_dir: Path) -> Iterator[tuple[Any, int, ResultReceiver]]:
    receiver = ResultReceiver().start()
    port = free_port()
    with make_client(
        models_dir,
        default_resolution=256,
        dicom_port=port,
        dicom_allowed_aes="MODALITY,ORTHANC",
        results_ae=f"RECEIVER@127.0.0.1:{receiver.port}",
    ) as c:
        yield c, port, receiver
    receiver.stop()


def test_c_echo_and_allow_list(scp_client: tuple[Any, int, ResultReceiver]) -> None:
    _, port, _ = scp_client
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="SHARPCXR")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    accepted, _ = c_store(port, phantom_dicom(phantom(0, size=256)), calling="INTRUDER")
    assert not accepted  # not on SHARPCXR_DICOM_ALLOWED_AES: association rejected


def test_c_store_in_results_out_by_c_store(scp_client: tuple[Any, int, ResultReceiver]) -> None:
    client, port, receiver = scp_client
    before = len(receiver.received)
    data = phantom_dicom(phantom(1, size=512))
    assert c_store(port, data) == (True, 0x0000)
    assert c_store(port, data) == (True, 0x0000)  # a resend is acknowledged, not redone
    [job] = wait_finished(client, header(data).StudyInstanceUID, 1)
    assert job["state"] == "done" and job["source"] == "dimse"
    made = {o["sop_instance_uid"] for o in job["objects"]}
    got = receiver.wait_for(before + 3)
    assert set(got[before:]) == made and len(got) == before + 3
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job['job_id']}").json()
        if all(d["state"] == "delivered" for d in job["deliveries"]):
            break
        time.sleep(0.1)
    assert [d["state"] for d in job["deliveries"]] == ["delivered"] * 3
    assert all(d["destination"] == "dimse" for d in job["deliveries"])


def test_c_store_of_a_jpeg2000_cr(scp_client: tuple[Any, int, ResultReceiver]) -> None:
    client, port, _ = scp_client
    data = pydicom_file("RG1_J2KR.dcm")
    ds = header(data)
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert ds.SOPClassUID == ComputedRadiographyImageStorage
    assert c_store(port, data) == (True, 0x0000)
    [job] = wait_finished(client, ds.StudyInstanceUID, 1)
    assert job["state"] in ("done", "refused"), job  # the gate may judge it; it was processed
    assert job["sop_instance_uid"] == ds.SOPInstanceUID


def test_c_store_refusals(scp_client: tuple[Any, int, ResultReceiver]) -> None:
    _, port, _ = scp_client
    ds = pydicom.dcmread(io.BytesIO(phantom_dicom(phantom(2, size=256))))
    del ds.StudyInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert c_store(port, buffer.getvalue()) == (True, 0xA900)


def test_delivery_retries_until_the_receiver_is_up(models_dir: Path) -> None:
    receiver = ResultReceiver()  # not started: deliveries fail first
    port = free_port()
    with make_client(
        models_dir,
        default_resolution=256,
        dicom_port=port,
        delivery_backoff_s=0.2,
        results_ae=f"RECEIVER@127.0.0.1:{receiver.port}",
    ) as c:
        data = phantom_dicom(phantom(3, size=256, positive=False))
        assert c_store(port, data) == (True, 0x0000)
        [job] = wait_finished(c, header(data).StudyInstanceUID, 1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            job = c.get(f"/v1/jobs/{job['job_id']}").json()
            if job["deliveries"] and all(d["attempts"] >= 2 for d in job["deliveries"]):
                break
            time.sleep(0.1)
        assert all(d["state"] == "pending" and d["last_error"] for d in job["deliveries"])
        assert "sharpcxr_outbox_depth 3.0" in c.get("/metrics").text
        receiver.start()
        try:
            receiver.wait_for(3, timeout_s=30)
        finally:
            receiver.stop()
        assert sorted(receiver.received) == sorted(o["sop_instance_uid"] for o in job["objects"])


def test_dx_context_is_offered(scp_client: tuple[Any, int, ResultReceiver]) -> None:
    _, port, _ = scp_client
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, JPEG2000Lossless)
    ae.add_requested_context(SegmentationStorage)  # not an image the service reads
    assoc = ae.associate("127.0.0.1", port, ae_title="SHARPCXR")
    assert assoc.is_established
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    assoc.release()
    assert accepted == {DigitalXRayImageStorageForPresentation}
