"""Sending result objects to a PACS: STOW-RS (dicomweb-client) and C-STORE (pynetdicom).

A sender takes ``[(sop_instance_uid, part10_bytes), ...]`` and reports each UID's outcome
through ``report(uid, error)`` as soon as it is known: ``None`` when the receiver confirmed
it, else a short reason (no patient data). Reporting at once (not after the batch) keeps
the window in which a confirmed object is not yet marked delivered, and would be sent
again after a crash, as short as one database commit. Only a confirmation counts: an HTTP
200 for the whole request or the UID in the response's ReferencedSOPSequence (STOW-RS), a
Success or Warning status (C-STORE). Senders are synchronous; the deliverer runs them in
a thread.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from service.settings import parse_ae_address

# Both libraries log UIDs of what they send at INFO; the service logs job ids only.
for _name in ("dicomweb_client", "pynetdicom"):
    logging.getLogger(_name).setLevel(logging.WARNING)

Outcome = dict[str, str | None]
#: ``report(uid, None)``: confirmed; ``report(uid, reason)``: not delivered this time
Report = Callable[[str, str | None], None]
#: C-STORE statuses that mean stored (PS3.4 B.2.3: Success, and the Warning ones)
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


@dataclass(frozen=True)
class Held:
    """An object whose earlier send was cut off: is it at the receiver already?"""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str


class Sender(Protocol):
    destination: str

    def send(self, objects: Sequence[tuple[str, bytes]], report: Report) -> None: ...

    def held(self, objects: Sequence[Held]) -> set[str] | None:
        """The UIDs among ``objects`` the receiver holds; None when it cannot tell."""
        ...


def _uids(dataset: pydicom.Dataset, sequence: str) -> set[str]:
    return {str(item.ReferencedSOPInstanceUID) for item in dataset.get(sequence, [])
            if "ReferencedSOPInstanceUID" in item}  # fmt: skip


class _RecordingSession(requests.Session):
    """A session with a timeout on every request that records each response's status
    (dicomweb-client returns the parsed body only; confirming needs 200 vs 202)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        self.statuses: list[int] = []

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout_s)
        response = super().request(*args, **kwargs)
        self.statuses.append(response.status_code)
        return response


class StowSender:
    """STOW-RS to ``url``: a DICOMweb base (``…/dicom-web``) or its ``…/studies`` resource;
    ``user:password@`` in the URL becomes HTTP basic auth. dicomweb-client's own retries
    are off: the outbox retries, with back-off and the in-doubt check."""

    destination = "stow"

    def __init__(self, url: str, *, timeout_s: float = 60.0) -> None:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]  # host[:port], IPv6 brackets kept
        path = parts.path.rstrip("/").removesuffix("/studies")
        self.base_url = urlunsplit((parts.scheme, netloc, path, "", ""))
        self.session = _RecordingSession(timeout_s)
        if parts.username:
            self.session.auth = (parts.username, parts.password or "")

    def _client(self) -> DICOMwebClient:
        client = DICOMwebClient(url=self.base_url, session=self.session)
        client.set_http_retry_params(retry=False)
        return client

    def send(self, objects: Sequence[tuple[str, bytes]], report: Report) -> None:
        for uid, error in self._store(objects).items():
            report(uid, error)

    def held(self, objects: Sequence[Held]) -> set[str] | None:
        """QIDO-RS per instance (PS3.18 10.6): found means stored."""
        client = self._client()
        found: set[str] = set()
        try:
            for obj in objects:
                matches = client.search_for_instances(
                    study_instance_uid=obj.study_instance_uid,
                    search_filters={"SOPInstanceUID": obj.sop_instance_uid},
                )
                if matches:
                    found.add(obj.sop_instance_uid)
        except Exception:  # requests' errors, dicomweb-client's RetryError, a bad answer
            return None
        return found

    def _store(self, objects: Sequence[tuple[str, bytes]]) -> Outcome:
        client = self._client()
        datasets = [pydicom.dcmread(io.BytesIO(data)) for _, data in objects]
        uids = [uid for uid, _ in objects]
        self.session.statuses.clear()
        try:
            response = client.store_instances(datasets)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            return dict.fromkeys(uids, f"STOW-RS answered HTTP {code}")
        except requests.RequestException as exc:
            return dict.fromkeys(uids, f"STOW-RS request failed ({type(exc).__name__})")
        status = self.session.statuses[-1] if self.session.statuses else None
        failed = _uids(response, "FailedSOPSequence")
        referenced = _uids(response, "ReferencedSOPSequence")
        # PS3.18 10.5.3: 200 means every instance was stored (a body may list them); any
        # other success status (202) confirms only what ReferencedSOPSequence names.
        confirmed = set(uids) - failed if status == 200 else referenced - failed
        return {
            uid: None if uid in confirmed
            else f"the STOW-RS receiver did not confirm this instance (HTTP {status})"
            for uid in uids
        }  # fmt: skip


class CStoreSender:
    """C-STORE to ``AET@host:port``, calling as ``calling_aet``; one association per batch."""

    destination = "dimse"

    def __init__(self, address: str, *, calling_aet: str, timeout_s: float = 60.0) -> None:
        self.called_aet, self.host, self.port = parse_ae_address(address)
        self.calling_aet = calling_aet
        self.timeout_s = timeout_s

    def held(self, objects: Sequence[Held]) -> set[str] | None:
        """C-FIND (Study Root, IMAGE level) per instance; None when the receiver offers no
        query service (then the object is sent again: at least once)."""
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet)
        if not assoc.is_established:
            return None
        found: set[str] = set()
        try:
            if not assoc.accepted_contexts:
                return None
            for obj in objects:
                query = pydicom.Dataset()
                query.QueryRetrieveLevel = "IMAGE"
                query.StudyInstanceUID = obj.study_instance_uid
                query.SeriesInstanceUID = obj.series_instance_uid
                query.SOPInstanceUID = obj.sop_instance_uid
                for status, identifier in assoc.send_c_find(
                    query, StudyRootQueryRetrieveInformationModelFind
                ):
                    if not status or "Status" not in status:
                        return None  # no answer: cannot tell
                    code = int(status.Status)
                    if code in (0xFF00, 0xFF01) and identifier is not None:
                        found.add(obj.sop_instance_uid)
                    elif code not in (0x0000, 0xFF00, 0xFF01):
                        return None
        finally:
            if assoc.is_established:
                assoc.release()
        return found

    def send(self, objects: Sequence[tuple[str, bytes]], report: Report) -> None:
        datasets = [(uid, pydicom.dcmread(io.BytesIO(data))) for uid, data in objects]
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for sop_class in sorted({str(ds.SOPClassUID) for _, ds in datasets}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet)
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "not established"
            for uid, _ in datasets:
                report(uid, f"association {why}")
            return
        try:
            for uid, ds in datasets:
                try:
                    status = assoc.send_c_store(ds)
                except (ValueError, RuntimeError) as exc:
                    report(uid, f"C-STORE not sent ({type(exc).__name__})")
                    continue
                code = int(status.Status) if "Status" in status else None
                report(uid, None if code in STORED_STATUSES else (
                    "no C-STORE response" if code is None else f"C-STORE status 0x{code:04X}"
                ))  # fmt: skip
        finally:
            if assoc.is_established:
                assoc.release()
