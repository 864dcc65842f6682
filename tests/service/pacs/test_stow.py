"""service.pacs.stow: per-instance checks and the PS3.18 Store Instances Response."""

from __future__ import annotations

import asyncio
import io
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML, generate_uid

from service.pacs.multipart import Part, iter_parts, parse_related_content_type
from service.pacs.stow import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    SOP_CLASS_NOT_SUPPORTED,
    STUDY_UID_MISMATCH,
    TRANSFER_SYNTAX_NOT_SUPPORTED,
    FailedRef,
    Instance,
    PartRefused,
    StoredRef,
    check_part,
    inspect_instance,
    store_response,
    warning_headers,
)
from tests.conftest import CR_IMAGE_STORAGE, build_dataset, make_dicom, pydicom_file, to_bytes

PATIENT = "Zyxwvut^Qponmlk"
CT = "application/dicom"


def ramp() -> np.ndarray[Any, Any]:
    return (np.arange(32 * 40, dtype=np.uint16) % 4096).reshape(32, 40)


def crafted(**elements: Any) -> bytes:
    return make_dicom(ramp(), PatientName=PATIENT, **uids(), **elements)


def uids() -> dict[str, Any]:
    return {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid()}


def identifiers(data: bytes) -> list[str]:
    """The values a refusal must never quote."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    keys = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientName")
    return [str(ds.get(k)) for k in keys if ds.get(k)]


def refusal(
    data: bytes, expected_study_uid: str | None = None, *, secrets: list[str] | None = None
) -> PartRefused:
    """The refusal of ``data``; its message quotes none of ``secrets`` (default: the
    identifiers of ``data`` itself)."""
    if secrets is None:
        secrets = identifiers(data) if len(data) > 132 and data[128:132] == b"DICM" else []
    with pytest.raises(PartRefused) as info:
        inspect_instance(data, expected_study_uid=expected_study_uid)
    exc = info.value
    assert not [value for value in secrets if value in exc.message]
    assert str(exc) == exc.message
    return exc


@pytest.mark.parametrize(
    ("name", "tsyntax"),
    [
        ("RG1_UNCR.dcm", "1.2.840.10008.1.2.1"),
        ("RG1_J2KR.dcm", "1.2.840.10008.1.2.4.90"),
        ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),
        ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"),  # deflated: inflated to find pixels
        ("SC_rgb.dcm", "1.2.840.10008.1.2.1"),  # colour: stored; the job refuses it later
    ],
)
def test_real_images_are_accepted(name: str, tsyntax: str) -> None:
    data = pydicom_file(name)
    instance = inspect_instance(data, expected_study_uid=None)
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    assert instance == Instance(
        ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, tsyntax, data
    )
    assert instance.data is data
    assert ds.SOPInstanceUID not in repr(instance)
    assert inspect_instance(data, expected_study_uid=ds.StudyInstanceUID) == instance


def test_crafted_image_with_study_from_the_url() -> None:
    study = generate_uid()
    data = make_dicom(ramp(), StudyInstanceUID=study, SeriesInstanceUID=generate_uid())
    instance = inspect_instance(data, expected_study_uid=study)
    assert (instance.study_instance_uid, instance.sop_class_uid) == (study, CR_IMAGE_STORAGE)
    assert instance.ref() == StoredRef(
        CR_IMAGE_STORAGE, instance.sop_instance_uid, study, instance.series_instance_uid
    )


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "no 'DICM' marker"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 500, "no 'DICM' marker"),
        (bytes(range(256)) * 4, "no 'DICM' marker"),
        (b"\x00" * 128 + b"DICM" + b"\xff" * 300, "TransferSyntaxUID"),
    ],
)
def test_non_dicom_is_cannot_understand(data: bytes, needle: str) -> None:
    exc = refusal(data)
    assert exc.failure_reason == CANNOT_UNDERSTAND == 0xC000
    assert needle in exc.message
    assert (exc.sop_class_uid, exc.sop_instance_uid) == (None, None)


def test_bare_dataset_without_part10_header_is_refused() -> None:
    exc = refusal(crafted(part10=False))
    assert exc.failure_reason == CANNOT_UNDERSTAND
    assert "Part 10" in exc.message


def test_truncated_pixel_data() -> None:
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "MR_small_bigendian.dcm"):
        data = pydicom_file(name)
        exc = refusal(data[: len(data) - 300])
        assert exc.failure_reason == CANNOT_UNDERSTAND
        assert "truncated" in exc.message


def test_no_cut_of_a_real_file_is_accepted() -> None:
    """Cut anywhere in the header or the pixel data: never stored as if complete."""
    allowed = {CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH_SOP_CLASS, SOP_CLASS_NOT_SUPPORTED}
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "test-SR.dcm"):
        data = pydicom_file(name)
        secrets = identifiers(data)
        for cut in [*range(0, min(len(data) - 1, 3000), 7), len(data) // 2]:
            exc = refusal(data[:cut], secrets=secrets)
            assert exc.failure_reason in allowed, (name, cut)


def test_corrupted_headers_are_refused_never_crash() -> None:
    """Seeded byte flips in a real header: an Instance or a PartRefused, nothing else."""
    original = pydicom_file("CT_small.dcm")
    rng = random.Random(31337)
    seen: set[str] = set()
    for _ in range(300):
        data = bytearray(original)
        for _ in range(5):
            data[rng.randrange(300, 6000)] = rng.randrange(256)
        try:
            inspect_instance(bytes(data), expected_study_uid=None)
            seen.add("accepted")
        except PartRefused as exc:
            seen.add("parsed" if "could not be parsed" in exc.message else "other refusal")
    assert seen == {"accepted", "parsed", "other refusal"}


def test_cut_inside_an_element_says_truncated() -> None:
    data = pydicom_file("RG1_UNCR.dcm")
    exc = refusal(data[:1000])  # inside the header, between two UIDs
    assert (exc.failure_reason, "truncated" in exc.message) == (CANNOT_UNDERSTAND, True)


@pytest.mark.parametrize(
    ("missing", "class_known"),
    [
        ("SOPInstanceUID", True),
        ("SOPClassUID", False),
        ("StudyInstanceUID", True),
        ("SeriesInstanceUID", True),
    ],
)
def test_missing_identifying_uid(missing: str, class_known: bool) -> None:
    ds = build_dataset(ramp(), **uids())
    delattr(ds, missing)
    exc = refusal(to_bytes(ds))
    assert exc.failure_reason == DATASET_DOES_NOT_MATCH_SOP_CLASS == 0xA900
    assert missing in exc.message
    assert (exc.sop_class_uid == CR_IMAGE_STORAGE) is class_known


def test_invalid_uid_is_refused() -> None:
    ds = build_dataset(ramp(), **uids())
    ds.SOPInstanceUID = "1.2.abc.4"
    exc = refusal(to_bytes(ds))
    assert exc.failure_reason == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "SOPInstanceUID" in exc.message and "1.2.abc" not in exc.message


def test_structured_report_has_no_pixel_data() -> None:
    data = pydicom_file("test-SR.dcm")
    exc = refusal(data)
    assert exc.failure_reason == SOP_CLASS_NOT_SUPPORTED == 0x0122
    assert "no pixel data" in exc.message
    ds = pydicom.dcmread(io.BytesIO(data))
    assert (exc.sop_class_uid, exc.sop_instance_uid) == (ds.SOPClassUID, ds.SOPInstanceUID)


def test_float_pixel_data_is_not_an_image() -> None:
    ds = build_dataset(None, **uids())
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = 4, 4, 1, 32
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.FloatPixelData = np.zeros(16, dtype=np.float32).tobytes()
    exc = refusal(to_bytes(ds))
    assert exc.failure_reason == SOP_CLASS_NOT_SUPPORTED
    assert "float pixel data" in exc.message


def test_unsupported_transfer_syntax() -> None:
    ds = build_dataset(None, transfer_syntax=MPEG2MPML, **uids())
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([b"\x00" * 16])
    ds["PixelData"].VR = "OB"
    exc = refusal(to_bytes(ds))
    assert exc.failure_reason == TRANSFER_SYNTAX_NOT_SUPPORTED == 0xC122
    assert "MPEG2" in exc.message and "cannot be decoded" in exc.message
    assert exc.sop_instance_uid == ds.SOPInstanceUID


def test_study_of_another_url_is_refused() -> None:
    data = crafted()
    exc = refusal(data, expected_study_uid=generate_uid())
    assert exc.failure_reason == STUDY_UID_MISMATCH == 0xC409
    assert "differs from the study in the request URL" in exc.message


def part(data: bytes | None, content_type: str | None = CT, **kw: Any) -> Part:
    headers = {"content-type": content_type} if content_type else {}
    headers.update(kw.pop("headers", {}))
    return Part(index=3, headers=headers, content_type=content_type, data=data, **kw)


def test_check_part_accepts_dicom_with_or_without_content_type() -> None:
    data = crafted()
    for ctype in (CT, None):
        assert check_part(part(data, ctype), expected_study_uid=None).data is data
    transfer = part(data, headers={"content-transfer-encoding": "binary"})
    assert check_part(transfer, expected_study_uid=None).data is data


@pytest.mark.parametrize(
    ("kwargs", "reason", "needle"),
    [
        ({"error": "oversized", "detail": "it holds 2.0 MB"}, OUT_OF_RESOURCES,
         "too large: it holds 2.0 MB (SHARPCXR_MAX_UPLOAD_MB)"),
        ({"error": "truncated", "detail": "cut"}, CANNOT_UNDERSTAND, "incomplete: cut"),
        ({"error": "malformed", "detail": "bad"}, CANNOT_UNDERSTAND, "malformed: bad"),
    ],
)  # fmt: skip
def test_check_part_maps_multipart_errors(kwargs: dict[str, Any], reason: int, needle: str) -> None:
    with pytest.raises(PartRefused) as info:
        check_part(part(None, **kwargs), expected_study_uid=None)
    assert info.value.failure_reason == reason
    assert needle in info.value.message
    assert info.value.failed(3) == FailedRef(None, None, reason, 3, info.value.message)


def test_check_part_refuses_other_media_types_and_encodings() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
    for ctype, shown in (("image/png", "image/png"), ("text/x-\u00e9vil", "another type")):
        with pytest.raises(PartRefused) as info:
            check_part(part(png, ctype), expected_study_uid=None)
        assert info.value.failure_reason == CANNOT_UNDERSTAND
        assert f"the part is {shown}, not application/dicom" in info.value.message
    base64 = part(crafted(), headers={"content-transfer-encoding": "base64"})
    with pytest.raises(PartRefused, match="Content-Transfer-Encoding"):
        check_part(base64, expected_study_uid=None)


SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


def refs() -> tuple[list[StoredRef], list[FailedRef]]:
    stored = [
        StoredRef(CR_IMAGE_STORAGE, "1.2.3.1", "1.2.3", "1.2.3.9"),
        StoredRef(CR_IMAGE_STORAGE, "1.2.3.2", "1.2.3", "1.2.3.9"),
    ]
    failed = [
        FailedRef(SR_CLASS, "1.2.3.3", SOP_CLASS_NOT_SUPPORTED, 2, "no pixel data"),
        FailedRef(None, None, CANNOT_UNDERSTAND, 3, "not DICOM"),
    ]
    return stored, failed


def test_response_status_codes() -> None:
    stored, failed = refs()
    assert store_response(stored, [], retrieve_base_url=None)[0] == 200
    assert store_response(stored, failed, retrieve_base_url=None)[0] == 202
    assert store_response([], failed, retrieve_base_url=None)[0] == 409
    with pytest.raises(ValueError, match="at least one"):
        store_response([], [], retrieve_base_url=None)


def test_response_json_is_exact() -> None:
    stored, failed = refs()
    _, body = store_response(stored, failed, retrieve_base_url="https://pacs.example/dicomweb/")
    base = "https://pacs.example/dicomweb/studies/1.2.3"

    def ui(value: str) -> dict[str, Any]:
        return {"vr": "UI", "Value": [value]}

    assert body == {
        "00081190": {"vr": "UR", "Value": [base]},
        "00081198": {
            "vr": "SQ",
            "Value": [
                {"00081150": ui(SR_CLASS), "00081155": ui("1.2.3.3"),
                 "00081197": {"vr": "US", "Value": [0x0122]}},
                {"00081197": {"vr": "US", "Value": [0xC000]}},
            ],
        },
        "00081199": {
            "vr": "SQ",
            "Value": [
                {"00081150": ui(CR_IMAGE_STORAGE), "00081155": ui(f"1.2.3.{i}"),
                 "00081190": {"vr": "UR", "Value": [f"{base}/series/1.2.3.9/instances/1.2.3.{i}"]}}
                for i in (1, 2)
            ],
        },
    }  # fmt: skip
    json.dumps(body)  # plain JSON types only


def test_response_without_retrieve_service_has_empty_type2_urls() -> None:
    stored, failed = refs()
    _, body = store_response(stored, failed, retrieve_base_url=None)
    assert body["00081190"] == {"vr": "UR"}
    assert all(item["00081190"] == {"vr": "UR"} for item in body["00081199"]["Value"])
    _, only_failed = store_response([], failed, retrieve_base_url="https://x")
    assert set(only_failed) == {"00081190", "00081198"}
    assert only_failed["00081190"] == {"vr": "UR"}


def test_response_of_two_studies_has_no_study_url() -> None:
    stored = [
        StoredRef(CR_IMAGE_STORAGE, "1.1.1", "1.1"),
        StoredRef(CR_IMAGE_STORAGE, "2.2.2", "2.2"),
    ]
    _, body = store_response(stored, [], retrieve_base_url="https://x")
    assert body["00081190"] == {"vr": "UR"}
    assert body["00081199"]["Value"][0]["00081190"] == {"vr": "UR"}  # no series known


def test_response_round_trips_through_pydicom() -> None:
    stored, failed = refs()
    _, body = store_response(stored, failed, retrieve_base_url="https://x/dicomweb")
    ds = Dataset.from_json(json.loads(json.dumps(body)))
    assert ds.RetrieveURL == "https://x/dicomweb/studies/1.2.3"
    assert [i.ReferencedSOPInstanceUID for i in ds.ReferencedSOPSequence] == ["1.2.3.1", "1.2.3.2"]
    assert [i.FailureReason for i in ds.FailedSOPSequence] == [0x0122, 0xC000]
    assert ds["FailedSOPSequence"].VR == "SQ"
    assert ds.FailedSOPSequence[0]["FailureReason"].VR == "US"
    assert ds.to_json_dict() == body


def test_warning_headers() -> None:
    _, failed = refs()
    quoted = FailedRef(None, None, CANNOT_UNDERSTAND, 0, 'a "quoted" \\ caf\u00e9\r\nline')
    values = warning_headers([*failed, quoted])
    assert values == [
        '299 sharpcxr "part 3: no pixel data (FailureReason 0122H)"',
        '299 sharpcxr "part 4: not DICOM (FailureReason C000H)"',
        '299 sharpcxr "part 1: a \\"quoted\\" \\\\ caf???line (FailureReason C000H)"',
    ]
    assert all(v.isascii() and "\n" not in v for v in values)
    many = warning_headers([failed[1]] * 30, max_values=5)
    assert (
        len(many) == 6 and many[-1] == '299 sharpcxr "25 more parts failed; see FailedSOPSequence"'
    )


def test_stow_request_end_to_end() -> None:
    """dicomweb-client's encoding -> iter_parts -> check_part -> store_response -> the
    client's own decoding of the answer (Dataset.from_json)."""
    study = generate_uid()
    good = [make_dicom(ramp(), StudyInstanceUID=study, SeriesInstanceUID=generate_uid())
            for _ in range(2)]  # fmt: skip
    other_study = crafted(PatientID="PID-SECRET-1")
    sr = pydicom_file("test-SR.dcm")
    contents = [good[0], sr, b"not dicom at all", other_study, good[1]]
    ctype = 'multipart/related; type="application/dicom"; boundary="e2e-boundary"'
    body = DICOMwebClient._encode_multipart_message(contents, ctype)
    related = parse_related_content_type(ctype)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    async def run() -> tuple[list[StoredRef], list[FailedRef]]:
        stored: list[StoredRef] = []
        failed: list[FailedRef] = []
        parts = iter_parts(chunks(), related.boundary, max_part_bytes=1 << 20,
                           max_total_bytes=1 << 24)  # fmt: skip
        async for p in parts:
            try:
                stored.append(check_part(p, expected_study_uid=study).ref())
            except PartRefused as exc:
                failed.append(exc.failed(p.index))
        return stored, failed

    stored, failed = asyncio.run(run())
    assert [f.part_index for f in failed] == [1, 2, 3]
    assert [f.failure_reason for f in failed] == [0x0122, 0xC000, 0xC409]
    status, answer = store_response(stored, failed, retrieve_base_url=None)
    assert status == 202
    ds = Dataset.from_json(answer)
    assert len(ds.ReferencedSOPSequence) == 2 and len(ds.FailedSOPSequence) == 3
    headers = warning_headers(failed)
    for secret in (*identifiers(other_study), *identifiers(sr), study):
        assert all(secret not in h for h in headers)


def _deflated(extra_zero_bytes: int) -> bytes:
    ds = build_dataset(np.full((64, 64), 100, np.uint16))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    if extra_zero_bytes:
        ds.add_new(0x00091010, "OB", bytes(extra_zero_bytes))  # inflates, deflates to ~0
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_deflate_bomb_is_refused_before_pydicom_inflates_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tracemalloc

    import service.pacs.stow as stow

    monkeypatch.setattr(stow, "MAX_INFLATED_BYTES", 8 * 2**20)
    assert stow.inspect_instance(_deflated(0), expected_study_uid=None).transfer_syntax_uid == (
        pydicom.uid.DeflatedExplicitVRLittleEndian
    )
    bomb = _deflated(64 * 2**20)  # 64 MiB of zeros: about 1000:1 smaller on the wire
    assert len(bomb) < 200_000
    tracemalloc.start()
    with pytest.raises(PartRefused) as refused:
        stow.inspect_instance(bomb, expected_study_uid=None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert refused.value.failure_reason == 0xA700 and "inflates past 8 MiB" in refused.value.message
    assert peak < 16 * 2**20  # measured 1 MiB at a time, never inflated whole
