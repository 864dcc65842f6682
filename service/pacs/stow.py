"""STOW-RS pieces (PS3.18 10.5): check each part's instance, build the Store Instances Response.

Framework-independent: :func:`check_part` turns one :class:`~service.pacs.multipart.Part`
into an :class:`Instance` or raises :class:`PartRefused` with a Failure Reason (0008,1197)
from PS3.18 Table I.2-2 (the C-STORE statuses of PS3.4 Table B.2-1):

========  =====================================================================
0xA700    Refused: out of resources: the part exceeds the per-instance limit
0xA900    Data set does not match SOP class: no SOP Class/Instance, Study or
          Series Instance UID (or one that is not a UID)
0xC000    Cannot understand: not DICOM Part 10, corrupt or truncated, a part
          that is not application/dicom, a malformed or truncated part
0xC122    Referenced Transfer Syntax not supported (no installed decoder)
0x0122    Referenced SOP Class not supported: no pixel data (SR, presentation
          states...) or float pixel data: only images are accepted
0xC409    Study Instance UID mismatch with the request URL's study: not in
          PS3.18 (which leaves extra codes to the conformance statement); in its
          Cxxx range, the value dcm4chee uses
========  =====================================================================

:func:`store_response` gives the HTTP status (200 all stored, 202 some failed, 409 none
stored; PS3.18 Table 10.5.3-1) and the response as DICOM JSON (PS3.18 Annex F, media
type :data:`DICOM_JSON`); :func:`warning_headers` the per-part messages as ``Warning``
header values (RFC 7234 5.5). Messages and reprs never hold UIDs or header values.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pydicom
import pydicom.uid as uids
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from imaging.dicom import check_decodable  # the decoder check of the imaging path
from imaging.errors import UnsupportedTransferSyntaxError
from service.pacs.multipart import DICOM_MEDIA_TYPE, Part

DICOM_JSON = "application/dicom+json"

OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
SOP_CLASS_NOT_SUPPORTED = 0x0122
STUDY_UID_MISMATCH = 0xC409
PROCESSING_FAILURE = 0x0110  # for the caller: the instance was valid but storing it failed

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_MEDIA = re.compile(r"[a-z0-9!#$&^_.+-]{1,40}/[a-z0-9!#$&^_.+-]{1,60}")
_IDENTITY_ENCODINGS = ("", "binary", "8bit", "7bit")
_Tag = tuple[int, int]
_PIXEL_DATA: _Tag = (0x7FE0, 0x0010)
_FLOAT_PIXEL_DATA: tuple[_Tag, ...] = ((0x7FE0, 0x0008), (0x7FE0, 0x0009))
_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_LONG_VRS = (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN")
_UNDEFINED = 0xFFFFFFFF


class PartRefused(Exception):  # noqa: N818 - a per-part outcome, not an error of the request
    """One part is not stored; ``failure_reason`` is its Failure Reason (0008,1197)."""

    def __init__(
        self,
        failure_reason: int,
        message: str,
        *,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> None:
        super().__init__(message)
        self.failure_reason = failure_reason
        self.message = message
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid

    def failed(self, part_index: int) -> FailedRef:
        return FailedRef(
            self.sop_class_uid, self.sop_instance_uid, self.failure_reason, part_index, self.message
        )


@dataclass(frozen=True, slots=True)
class Instance:
    """An accepted instance: its identifying UIDs and the whole Part 10 bytes."""

    sop_class_uid: str
    sop_instance_uid: str = field(repr=False)
    study_instance_uid: str = field(repr=False)
    series_instance_uid: str = field(repr=False)
    transfer_syntax_uid: str
    data: bytes = field(repr=False)

    def ref(self) -> StoredRef:
        return StoredRef(
            self.sop_class_uid,
            self.sop_instance_uid,
            self.study_instance_uid,
            self.series_instance_uid,
        )


@dataclass(frozen=True, slots=True)
class StoredRef:
    """A stored instance, for the Referenced SOP Sequence (study and series: RetrieveURLs)."""

    sop_class_uid: str
    sop_instance_uid: str = field(repr=False)
    study_instance_uid: str | None = field(default=None, repr=False)
    series_instance_uid: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class FailedRef:
    """A part that was not stored; ``part_index`` is 0-based, ``message`` has no UIDs."""

    sop_class_uid: str | None
    sop_instance_uid: str | None = field(repr=False)
    failure_reason: int
    part_index: int
    message: str


# ------------------------------------------------------------------------ the checks
def check_part(part: Part, *, expected_study_uid: str | None) -> Instance:
    """The instance of one multipart part, or :class:`PartRefused`.

    A part without Content-Type is taken as the request's ``type`` (application/dicom).
    """
    if part.error == "oversized":
        raise PartRefused(
            OUT_OF_RESOURCES,
            f"the part is too large: {part.detail} (SHARPCXR_MAX_UPLOAD_MB); send a "
            "smaller instance",
        )
    if part.error is not None or part.data is None:
        what = "incomplete" if part.error == "truncated" else "malformed"
        raise PartRefused(
            CANNOT_UNDERSTAND,
            f"the part is {what}: {part.detail}; check how the client encodes multipart/related",
        )
    encoding = part.headers.get("content-transfer-encoding", "").strip().lower()
    if encoding not in _IDENTITY_ENCODINGS:
        raise PartRefused(
            CANNOT_UNDERSTAND,
            "the part has a Content-Transfer-Encoding (such as base64); HTTP sends the "
            "DICOM bytes as they are: drop the encoding",
        )
    if part.content_type not in (None, DICOM_MEDIA_TYPE):
        shown = part.content_type if _MEDIA.fullmatch(part.content_type) else "another type"
        raise PartRefused(
            CANNOT_UNDERSTAND,
            f"the part is {shown}, not {DICOM_MEDIA_TYPE}; send each instance as a DICOM "
            f"Part 10 file with `Content-Type: {DICOM_MEDIA_TYPE}`",
        )
    return inspect_instance(part.data, expected_study_uid=expected_study_uid)


def _cannot_understand(detail: str) -> PartRefused:
    return PartRefused(CANNOT_UNDERSTAND, f"the part is not a usable DICOM file: {detail}")


def inspect_instance(data: bytes, *, expected_study_uid: str | None) -> Instance:
    """Check the Part 10 header of ``data``; the :class:`Instance` keeps all the bytes.

    Reads up to the pixel data only (``stop_before_pixels``). Checked in this order, the
    first failure wins: Part 10 and parseable (C000), the four UIDs (A900), Pixel Data
    follows (0122) and is complete (C000), a decodable transfer syntax (C122), the study
    of the URL (C409).
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise _cannot_understand(
            "no 'DICM' marker at byte 128: send DICOM Part 10 files (with preamble and "
            "file meta information), one per part"
        )
    _check_inflated_size(data)
    fp = io.BytesIO(data)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        end = fp.tell()
        tsyntax = uids.UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
        deflated = tsyntax == uids.DeflatedExplicitVRLittleEndian  # fp holds no positions
        cut_short = end == len(data) and not deflated and _cut_short(ds, end)
        for elem in ds:  # a malformed value fails here, not later in a job
            _ = elem.value
    except Exception:  # pydicom raises many types on malformed input; never quote it
        raise _cannot_understand("the header could not be parsed (corrupt)") from None
    if not _UID.fullmatch(tsyntax):
        raise _cannot_understand("its file meta information has no valid TransferSyntaxUID")
    if cut_short:
        raise _cannot_understand("the data set ends inside an element (truncated)")

    found = {keyword: _uid(ds, keyword) for keyword in _REQUIRED}
    sop_class, sop_instance = found["SOPClassUID"], found["SOPInstanceUID"]

    def refused(failure_reason: int, message: str) -> PartRefused:
        return PartRefused(
            failure_reason, message, sop_class_uid=sop_class, sop_instance_uid=sop_instance
        )

    uid = {keyword: value for keyword, value in found.items() if value is not None}
    if len(uid) < len(_REQUIRED):
        missing = ", ".join(keyword for keyword in _REQUIRED if keyword not in uid)
        raise refused(
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"the data set lacks a valid {missing} (a UID of digits and dots, at most 64 "
            "characters); the sending system must fill in these attributes",
        )
    tag, complete = _pixel_data_tag(data, end, tsyntax)
    if tag in _FLOAT_PIXEL_DATA:
        raise refused(
            SOP_CLASS_NOT_SUPPORTED,
            "the instance holds float pixel data (a parametric map), not a radiograph; "
            "send the radiograph itself",
        )
    if tag != _PIXEL_DATA:
        raise refused(
            SOP_CLASS_NOT_SUPPORTED,
            "the instance has no pixel data (a report, presentation state or other "
            "non-image object): only images can be assessed; send the image itself",
        )
    if not complete:
        raise refused(
            CANNOT_UNDERSTAND,
            "the part is not a usable DICOM file: its pixel data end before their declared "
            "length (truncated)",
        )
    try:
        check_decodable(tsyntax)
    except UnsupportedTransferSyntaxError as exc:
        raise refused(TRANSFER_SYNTAX_NOT_SUPPORTED, exc.message) from None
    if expected_study_uid is not None and uid["StudyInstanceUID"] != expected_study_uid.strip():
        raise refused(
            STUDY_UID_MISMATCH,
            "its StudyInstanceUID differs from the study in the request URL; send it to "
            "/studies/ of its own study, or to /studies without a study",
        )
    return Instance(
        uid["SOPClassUID"],
        uid["SOPInstanceUID"],
        uid["StudyInstanceUID"],
        uid["SeriesInstanceUID"],
        str(tsyntax),
        data,
    )


def _cut_short(ds: Dataset, size: int) -> bool:
    """Whether bytes are left after the last element read: pydicom drops (and only warns
    about) an element cut off by the end of the data."""
    if not ds:
        return False
    last = ds.get_item(max(ds.keys()))
    if not isinstance(last, RawDataElement) or last.length == _UNDEFINED:
        return False  # already converted, or a sequence whose end is not recorded
    return bool(last.value_tell + last.length != size)


#: the most a deflated data set may inflate to (pydicom inflates it whole, in memory): a
#: 36 Mpx 16-bit image is 72 MB; a 1 MB part that inflates to 1 GB is a bomb
MAX_INFLATED_BYTES = 256 * 1024 * 1024


def _check_inflated_size(data: bytes) -> None:
    """Refuse a Deflated Explicit VR Little Endian part that inflates past the limit,
    measuring with a bounded decompressor before pydicom inflates it all at once."""
    # File meta: (0002,0000) UL group length right after "DICM" (explicit VR LE, PS3.10 7.1)
    if data[132:138] != b"\x02\x00\x00\x00UL" or len(data) < 144:
        return  # malformed meta: the header read below refuses it with its reason
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    if uids.DeflatedExplicitVRLittleEndian.encode() not in data[144:meta_end]:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, inflated = data[meta_end:], 0
    try:  # 1 MiB of output at a time, counted and dropped: memory stays small
        while pending and inflated <= MAX_INFLATED_BYTES:
            inflated += len(inflater.decompress(pending, 1 << 20))
            pending = inflater.unconsumed_tail
    except zlib.error:
        raise _cannot_understand("its deflated data set could not be inflated") from None
    if inflated > MAX_INFLATED_BYTES:
        raise PartRefused(
            OUT_OF_RESOURCES,
            f"its deflated data set inflates past {MAX_INFLATED_BYTES // 2**20} MiB "
            "(a decompression bomb, or an image far larger than a radiograph); send it "
            "uncompressed or with a pixel compression",
        )


def _uid(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip().rstrip("\0") if isinstance(value, str) else ""
    return text if 0 < len(text) <= 64 and _UID.fullmatch(text) else None


def _pixel_data_tag(data: bytes, end: int, tsyntax: uids.UID) -> tuple[_Tag | None, bool]:
    """The tag of the element where the header read stopped, and whether it is complete."""
    if tsyntax == uids.DeflatedExplicitVRLittleEndian:  # positions are in the inflated data
        try:
            full = pydicom.dcmread(io.BytesIO(data))
        except Exception:
            raise _cannot_understand("its deflated data set could not be inflated") from None
        for tag in (_PIXEL_DATA, *_FLOAT_PIXEL_DATA):
            if (tag[0] << 16 | tag[1]) in full:
                return tag, True
        return None, True
    if end + 8 > len(data):
        return None, True
    order: Literal["little", "big"] = "little" if tsyntax.is_little_endian else "big"
    group = int.from_bytes(data[end : end + 2], order)
    element = int.from_bytes(data[end + 2 : end + 4], order)
    return (group, element), _element_complete(data, end, tsyntax.is_implicit_VR, order)


def _element_complete(
    data: bytes, pos: int, implicit: bool, order: Literal["little", "big"]
) -> bool:
    """Whether the element at ``pos`` (Pixel Data) holds all its declared bytes."""
    if implicit or data[pos + 4 : pos + 6] in _LONG_VRS:
        offset, width = (4, 4) if implicit else (8, 4)
    else:
        offset, width = 6, 2
    header = offset + width
    if len(data) < pos + header:
        return False
    length = int.from_bytes(data[pos + offset : pos + header], order)
    if length == _UNDEFINED:  # encapsulated: the sequence delimiter must be there
        delimiter = b"\xfe\xff\xdd\xe0" if order == "little" else b"\xff\xfe\xe0\xdd"
        return data.rfind(delimiter, pos + header) >= 0
    return pos + header + length <= len(data)


# ------------------------------------------------------------------------ the response
def store_response(
    stored: Sequence[StoredRef],
    failed: Sequence[FailedRef],
    *,
    retrieve_base_url: str | None,
) -> tuple[int, dict[str, Any]]:
    """``(http_status, DICOM JSON body)`` of a Store Instances Response (PS3.18 Annex I).

    ``retrieve_base_url`` is the root of a DICOMweb service that serves Studies Retrieve
    for the stored instances (``{base}/studies/...``); None when there is none, and the
    Type 2 Retrieve URLs are then present and empty.
    """
    if not stored and not failed:
        raise ValueError("a store response needs at least one stored or failed instance")
    status = 200 if not failed else 202 if stored else 409
    base = retrieve_base_url.rstrip("/") if retrieve_base_url else None
    studies = {ref.study_instance_uid for ref in stored}
    study = studies.pop() if len(studies) == 1 else None
    ds = Dataset()
    ds.RetrieveURL = f"{base}/studies/{study}" if base and study else ""
    if failed:
        ds.FailedSOPSequence = [_failed_item(ref) for ref in failed]
    if stored:
        ds.ReferencedSOPSequence = [_stored_item(ref, base) for ref in stored]
    return status, ds.to_json_dict()


def _stored_item(ref: StoredRef, base: str | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    url = ""
    if base and ref.study_instance_uid and ref.series_instance_uid:
        url = (
            f"{base}/studies/{ref.study_instance_uid}/series/{ref.series_instance_uid}"
            f"/instances/{ref.sop_instance_uid}"
        )
    item.RetrieveURL = url
    return item


def _failed_item(ref: FailedRef) -> Dataset:
    item = Dataset()
    if ref.sop_class_uid:
        item.ReferencedSOPClassUID = ref.sop_class_uid
    if ref.sop_instance_uid:
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    item.FailureReason = ref.failure_reason
    return item


def _quoted(text: str, limit: int = 400) -> str:
    """``text`` as the inside of an HTTP quoted-string: ASCII, no controls, bounded."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)[:limit]
    return clean.replace("\\", "\\\\").replace('"', '\\"')


def warning_headers(
    failed: Sequence[FailedRef], *, agent: str = "sharpcxr", max_values: int = 20
) -> list[str]:
    """``Warning`` header values, one per failed part: ``299 sharpcxr "part 2: ..."``.

    Parts are numbered from 1 (``part_index + 1``); past ``max_values`` one value says how
    many more failed.
    """
    values = [
        f'299 {agent} "'
        + _quoted(
            f"part {ref.part_index + 1}: {ref.message} (FailureReason {ref.failure_reason:04X}H)"
        )
        + '"'
        for ref in failed[:max_values]
    ]
    if len(failed) > max_values:
        more = len(failed) - max_values
        values.append(f'299 {agent} "{more} more parts failed; see FailedSOPSequence"')
    return values
