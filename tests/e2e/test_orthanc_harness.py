"""The Orthanc harness against a real Orthanc: storing into it (REST, STOW-RS, C-STORE),
and what Orthanc sends to a DICOM modality (C-STORE SCU) and a DICOMweb server (STOW-RS
client), recorded byte for byte so sharpcxr's endpoints can be made to accept it."""

from __future__ import annotations

import io
import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from pynetdicom import AE

import tests.e2e.orthanc as harness
from tests.conftest import CR_IMAGE_STORAGE, make_dicom, pydicom_file
from tests.e2e.orthanc import (
    TAG_FAILED_SOP_SEQUENCE,
    TAG_REFERENCED_SOP_SEQUENCE,
    TAG_SOP_CLASS_UID,
    TAG_SOP_INSTANCE_UID,
    FoundInstance,
    Orthanc,
    OrthancError,
    OrthancFactory,
    RecordedRequest,
    StorageSCP,
    StowRecorder,
    find_orthanc,
    orthanc_factory_instance,
    orthanc_instance,
    stow_success,
)

pytestmark = pytest.mark.skipif(find_orthanc() is None, reason=harness.SKIP_REASON)

REAL_FILES = {"RG1_J2KR.dcm": JPEG2000Lossless, "RG1_UNCR.dcm": ExplicitVRLittleEndian}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    yield from orthanc_instance(tmp_path_factory)


@pytest.fixture
def clean_orthanc(orthanc: Orthanc) -> Iterator[Orthanc]:
    orthanc.delete_all()
    yield orthanc
    orthanc.delete_all()


@pytest.fixture
def orthanc_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancFactory]:
    yield from orthanc_factory_instance(tmp_path_factory)


def fresh(name: str) -> Dataset:
    """A pydicom test file with new study/series/instance UIDs (pixel data untouched)."""
    ds = pydicom.dcmread(io.BytesIO(pydicom_file(name)))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def to_part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def small_cr() -> bytes:
    """A small CR (Explicit VR LE), new UIDs, for the exchanges where size is irrelevant."""
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096
    return make_dicom(pixels, StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid())


def uid_of(item: dict[str, Any], tag: str) -> str:
    return str(item[tag]["Value"][0])


# -- start-up and the harness itself ---------------------------------------------------------


def test_starts_on_loopback_and_answers(orthanc: Orthanc) -> None:
    system = orthanc.get_json("/system")
    assert system["DicomAet"] == "ORTHANC"
    assert system["HttpPort"] == orthanc.http_port
    assert system["DicomPort"] == orthanc.dicom_port
    assert "dicom-web" in orthanc.get_json("/plugins")
    assert orthanc.stow_url == f"http://127.0.0.1:{orthanc.http_port}/dicom-web/studies"
    assert 0 < orthanc.startup_s < 30
    print(f"Orthanc {system['Version']} started in {orthanc.startup_s:.2f} s")


def test_retries_once_when_a_port_is_taken(
    orthanc_factory: OrthancFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = int(busy.getsockname()[1])
        real_free_port = harness.free_port
        ports = iter([taken, real_free_port()])
        monkeypatch.setattr(harness, "free_port", lambda: next(ports, None) or real_free_port())
        instance = orthanc_factory()
    assert instance.http_port != taken
    assert instance.get_json("/system")["HttpPort"] == instance.http_port


def test_a_start_failure_raises_with_the_log_tail(orthanc_factory: OrthancFactory) -> None:
    with pytest.raises(OrthancError, match=r"(?s)Orthanc exited at start-up.*Bad file format"):
        orthanc_factory(config={"DicomModalities": {"bad": ["AET-only"]}})


# -- storing into Orthanc --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_upload_then_qido_wado_and_native_file(clean_orthanc: Orthanc, name: str) -> None:
    data = to_part10(fresh(name))
    ds = pydicom.dcmread(io.BytesIO(data))
    answer = clean_orthanc.upload(data)
    assert answer["Status"] == "Success"
    assert {"ID", "ParentStudy", "ParentSeries", "ParentPatient"} <= answer.keys()

    (found,) = clean_orthanc.wait_for_instances(ds.StudyInstanceUID, 1, timeout_s=10)
    assert found == FoundInstance(
        answer["ID"], CR_IMAGE_STORAGE, ds.SOPInstanceUID, ds.SeriesInstanceUID
    )
    assert clean_orthanc.instance_metadata(found.orthanc_id)["TransferSyntax"] == REAL_FILES[name]

    (item,) = clean_orthanc.qido_instances(ds.StudyInstanceUID)
    assert uid_of(item, TAG_SOP_INSTANCE_UID) == ds.SOPInstanceUID
    assert uid_of(item, TAG_SOP_CLASS_UID) == CR_IMAGE_STORAGE
    (series,) = clean_orthanc.series_of_study(ds.StudyInstanceUID)
    assert uid_of(series, "0020000E") == ds.SeriesInstanceUID

    assert clean_orthanc.instance_file(found.orthanc_id) == data  # stored byte for byte
    wado = clean_orthanc.retrieve_instance(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    assert wado == data  # transfer-syntax=*: as stored

    clean_orthanc.delete_all()
    assert clean_orthanc.find_instances(ds.StudyInstanceUID) == []


def test_wado_rs_without_a_transfer_syntax_cannot_transcode_jpeg2000(
    clean_orthanc: Orthanc,
) -> None:
    """Without ``transfer-syntax=*`` the plugin transcodes to Explicit VR LE, which this
    Orthanc (DCMTK, no GDCM plugin) cannot do from JPEG 2000."""
    ds = fresh("RG1_J2KR.dcm")
    clean_orthanc.upload(to_part10(ds))
    with pytest.raises(OrthancError, match="500"):
        clean_orthanc.retrieve_instance(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, transfer_syntax=""
        )
    assert "Cannot transcode image" in clean_orthanc.log_tail()


@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_stow_rs_into_orthanc_with_dicomweb_client(clean_orthanc: Orthanc, name: str) -> None:
    ds = fresh(name)
    client = DICOMwebClient(url=clean_orthanc.dicomweb_url)
    response = client.store_instances([ds])
    (referenced,) = response.ReferencedSOPSequence
    assert referenced.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert not response.get("FailedSOPSequence")  # Orthanc sends it, empty

    (item,) = clean_orthanc.qido_instances(ds.StudyInstanceUID)
    assert uid_of(item, TAG_SOP_INSTANCE_UID) == ds.SOPInstanceUID
    (found,) = clean_orthanc.find_instances(ds.StudyInstanceUID)
    assert clean_orthanc.instance_metadata(found.orthanc_id)["TransferSyntax"] == REAL_FILES[name]
    assert (
        clean_orthanc.instance_metadata(found.orthanc_id)["Origin"] == "Plugins"
    )  # via the plugin


@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_c_echo_and_c_store_from_a_pynetdicom_scu(clean_orthanc: Orthanc, name: str) -> None:
    ds = fresh(name)
    ae = AE(ae_title="SHARPCXR")
    ae.add_requested_context(CR_IMAGE_STORAGE, [REAL_FILES[name]])
    ae.add_requested_context(harness.VERIFICATION_SOP_CLASS)
    assoc = ae.associate(clean_orthanc.host, clean_orthanc.dicom_port, ae_title=clean_orthanc.aet)
    assert assoc.is_established
    try:
        accepted = {
            str(cx.abstract_syntax): str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
        }
        assert accepted[CR_IMAGE_STORAGE] == REAL_FILES[name]
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()

    (found,) = clean_orthanc.wait_for_instances(ds.StudyInstanceUID, 1, timeout_s=10)
    assert found.sop_instance_uid == ds.SOPInstanceUID
    metadata = clean_orthanc.instance_metadata(found.orthanc_id)
    assert metadata["TransferSyntax"] == REAL_FILES[name]  # stored as received
    assert metadata["RemoteAET"] == "SHARPCXR"
    assert metadata["Origin"] == "DicomProtocol"


# -- Orthanc as a C-STORE SCU ----------------------------------------------------------------

CR_CONTEXTS_PROPOSED_FOR_J2K = [
    (CR_IMAGE_STORAGE, [JPEG2000Lossless]),
    (CR_IMAGE_STORAGE, [ExplicitVRLittleEndian]),
    (CR_IMAGE_STORAGE, [ImplicitVRLittleEndian, ExplicitVRBigEndian]),
]


def test_orthanc_c_stores_to_a_modality_as_stored(orthanc_factory: OrthancFactory) -> None:
    with StorageSCP(aet="STORESCP") as scp:
        instance = orthanc_factory(modalities={"scp": scp.modality})
        assert instance.echo("scp")
        j2k, uncompressed = fresh("RG1_J2KR.dcm"), fresh("RG1_UNCR.dcm")
        ids = [instance.upload(to_part10(ds))["ID"] for ds in (j2k, uncompressed)]

        answer = instance.store_to_modality("scp", ids)
        assert answer["InstancesCount"] == 2
        assert answer["FailedInstancesCount"] == 0
        assert answer["RemoteAet"] == "STORESCP"
        received = scp.wait_for(2)

    by_uid = {r.dataset.SOPInstanceUID: r for r in received}
    assert by_uid.keys() == {j2k.SOPInstanceUID, uncompressed.SOPInstanceUID}
    for sent, syntax in ((j2k, JPEG2000Lossless), (uncompressed, ExplicitVRLittleEndian)):
        got = by_uid[sent.SOPInstanceUID]
        assert got.transfer_syntax == syntax  # no transcoding when the SCP accepts it
        assert got.dataset.file_meta.TransferSyntaxUID == syntax
        assert got.dataset.PixelData == sent.PixelData
        assert got.calling_aet == "ORTHANC"
    # One association for both; for the CR class: the stored syntax, then Explicit VR LE,
    # then Implicit VR LE + Explicit VR BE; plus ~60 other storage classes (uncompressed).
    proposed = received[0].proposed
    assert [cx for cx in proposed if cx[0] == CR_IMAGE_STORAGE] == CR_CONTEXTS_PROPOSED_FOR_J2K
    assert len(proposed) > 100


def test_orthanc_transcodes_only_between_uncompressed_syntaxes(
    orthanc_factory: OrthancFactory,
) -> None:
    contexts = [(CR_IMAGE_STORAGE, [ImplicitVRLittleEndian])]
    with StorageSCP(aet="IMPLICIT", contexts=contexts) as scp:
        instance = orthanc_factory(modalities={"implicit": scp.modality})
        j2k, uncompressed = fresh("RG1_J2KR.dcm"), fresh("RG1_UNCR.dcm")
        j2k_id = instance.upload(to_part10(j2k))["ID"]
        uncompressed_id = instance.upload(to_part10(uncompressed))["ID"]

        instance.store_to_modality("implicit", [uncompressed_id])
        (got,) = scp.wait_for(1)
        assert got.transfer_syntax == ImplicitVRLittleEndian
        assert got.dataset.PixelData == uncompressed.PixelData

        with pytest.raises(OrthancError, match="500"):  # JPEG 2000 -> uncompressed: no codec
            instance.store_to_modality("implicit", [j2k_id])
        assert "Cannot transcode from 1.2.840.10008.1.2.4.90" in instance.log_tail()
        assert len(scp.received) == 1


# -- Orthanc as a STOW-RS client -------------------------------------------------------------

BOUNDARY = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def expected_body(boundary: str, files: list[bytes]) -> bytes:
    """Orthanc's framing: no preamble, per part Content-Type and Content-Length, CRLF
    after each part's bytes, the close delimiter without a trailing CRLF."""
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
        + b"\r\n"
        for data in files
    )
    return body + f"--{boundary}--".encode()


def test_orthanc_stow_client_request(orthanc_factory: OrthancFactory) -> None:
    with StowRecorder() as recorder:
        instance = orthanc_factory(
            dicomweb_servers={
                "sharpcxr": {
                    "Url": f"{recorder.url}/dicom-web/",
                    "HttpHeaders": {"X-API-Key": "s3cret"},
                },
                "noslash": f"{recorder.url}/base",
                "unchunked": {"Url": f"{recorder.url}/", "ChunkedTransfers": False},
            }
        )
        files = [to_part10(fresh("RG1_J2KR.dcm")), small_cr()]
        uploaded = [instance.upload(data) for data in files]
        ids = [u["ID"] for u in uploaded]
        stored = [instance.instance_file(i) for i in ids]
        assert stored == files

        answer = instance.stow_to_server("sharpcxr", ids)
        assert answer == {"InstancesCount": "2", "NetworkSizeMB": str(sum(map(len, files)) >> 20)}
        instance.stow_to_server("noslash", [ids[1]])
        instance.stow_to_server("unchunked", [ids[1]])
        instance.stow_to_server("sharpcxr", [ids[1]], http_headers={"X-Trace": "t1"})
        instance.stow_to_server("sharpcxr", [uploaded[0]["ParentStudy"]])  # a whole study
        requests = list(recorder.requests)

    assert len(requests) == 5  # one request a job, nothing split, no retries
    first, noslash, unchunked, with_header, study = requests
    assert first.request_line == "POST /dicom-web/studies HTTP/1.1"
    assert noslash.request_line == "POST /base/studies HTTP/1.1"
    assert unchunked.request_line == "POST /studies HTTP/1.1"

    names = [name for name, _ in first.headers]
    assert names == ["Host", "Accept", "Content-Type", "X-API-Key", "Transfer-Encoding"]
    assert first.header("Host") == f"127.0.0.1:{recorder.port}"
    assert first.header("Accept") == "application/dicom+json"
    assert first.header("X-API-Key") == "s3cret"
    assert first.header("Transfer-Encoding") == "chunked"
    assert first.header("Content-Length") is None
    assert first.header("Expect") is None  # no 100-continue
    content_type = first.header("Content-Type") or ""
    match = re.fullmatch(
        r'multipart/related; type="application/dicom"; boundary=(\S+)', content_type
    )
    assert match is not None, content_type
    boundary = match.group(1)
    uuid = boundary[: len(boundary) // 2]
    assert BOUNDARY.fullmatch(uuid) and boundary == f"{uuid}-{uuid}", boundary  # UUID-UUID

    assert first.body == expected_body(boundary, files)
    assert [part.headers for part in first.parts] == [
        {"content-type": "application/dicom", "content-length": str(len(data))} for data in files
    ]
    assert max(first.chunk_sizes) <= 65536 and first.chunk_sizes[-1] == 0

    assert unchunked.header("Transfer-Encoding") is None
    unchunked_boundary = harness.multipart_boundary(unchunked.header("Content-Type") or "")
    assert unchunked.header("Content-Length") == str(len(unchunked.body))
    assert unchunked.body == expected_body(unchunked_boundary, [files[1]])
    assert noslash.header("X-API-Key") is None
    assert with_header.header("X-Trace") == "t1" and with_header.header("X-API-Key") == "s3cret"
    assert [part.content for part in study.parts] == [files[0]]  # the study of the first


# What Orthanc 1.10.1 / DICOMweb plugin 1.7 makes of a STOW-RS server's answer: success
# needs a 2xx status AND a DICOM JSON object whose ReferencedSOPSequence (0008,1199) has
# exactly as many items as instances sent, with no FailedSOPSequence / OtherFailures items.
# The Content-Type of the answer is not looked at.
Answer = tuple[int, dict[str, str], bytes]


def referenced(request: RecordedRequest) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(stow_success(request)[2])
    return answer


def failed_item() -> dict[str, Any]:
    return {"00081197": {"vr": "US", "Value": [0xA700]}}


STOW_ANSWERS: dict[str, tuple[bool, Any]] = {
    "200 dicom+json": (True, lambda r: stow_success(r)),
    "200 application/json": (
        True,
        lambda r: (200, {"Content-Type": "application/json"}, stow_success(r)[2]),
    ),
    "200 no content-type": (True, lambda r: (200, {}, stow_success(r)[2])),
    "202 all referenced": (True, lambda r: (202, *stow_success(r)[1:])),
    "200 empty FailedSOPSequence": (
        True,
        lambda r: (
            200,
            {},
            json.dumps({**referenced(r), TAG_FAILED_SOP_SEQUENCE: {"vr": "SQ"}}).encode(),
        ),
    ),
    "202 with a FailedSOPSequence item": (
        False,
        lambda r: (
            202,
            {},
            json.dumps(
                {**referenced(r), TAG_FAILED_SOP_SEQUENCE: {"vr": "SQ", "Value": [failed_item()]}}
            ).encode(),
        ),
    ),
    "200 fewer referenced than sent": (
        False,
        lambda r: (
            200,
            {},
            json.dumps({TAG_REFERENCED_SOP_SEQUENCE: {"vr": "SQ", "Value": []}}).encode(),
        ),
    ),
    "200 empty body": (False, lambda r: (200, {}, b"")),
    "204 no content": (False, lambda r: (204, {}, b"")),
    "200 a JSON array": (False, lambda r: (200, {}, json.dumps([referenced(r)]).encode())),
    "409 with a full answer": (False, lambda r: (409, *stow_success(r)[1:])),
    "400": (False, lambda r: (400, {}, b"bad request")),
    "500": (False, lambda r: (500, {}, b"oops")),
}


@pytest.fixture(scope="module")
def stow_target(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Orthanc, StowRecorder, dict[str, Any]]]:
    answer: dict[str, Any] = {"make": stow_success}
    with StowRecorder(lambda request: answer["make"](request)) as recorder:
        for instance in orthanc_instance(
            tmp_path_factory, dicomweb_servers={"sharpcxr": f"{recorder.url}/dicom-web/"}
        ):
            yield instance, recorder, answer


@pytest.mark.parametrize("case", list(STOW_ANSWERS))
def test_orthanc_stow_client_answer_handling(
    stow_target: tuple[Orthanc, StowRecorder, dict[str, Any]], case: str
) -> None:
    instance, recorder, answer = stow_target
    succeeds, make = STOW_ANSWERS[case]
    answer["make"] = make
    orthanc_id = instance.upload(small_cr())["ID"]
    before = len(recorder.requests)
    if succeeds:
        assert instance.stow_to_server("sharpcxr", [orthanc_id])["InstancesCount"] == "1"
    else:
        with pytest.raises(OrthancError, match="-> 500"):
            instance.stow_to_server("sharpcxr", [orthanc_id])
        job = instance.stow_to_server("sharpcxr", [orthanc_id], synchronous=False)
        result = instance.wait_for_job(job["ID"])
        assert result["State"] == "Failure"
        assert result["Type"] == "DicomWebStowClient"
        assert result["Content"]["FunctionErrorDescription"]
    assert len(recorder.requests) == before + (1 if succeeds else 2)  # never retried
