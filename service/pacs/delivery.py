"""Sending result objects to a PACS: STOW-RS (dicomweb-client) and C-STORE (pynetdicom).

A sender takes ``[(sop_instance_uid, part10_bytes), ...]`` and answers, per UID, ``None``
when the receiver confirmed it or a short reason (no patient data) when it did not. Only
a confirmation counts: an HTTP 200 for the whole request or the UID in the response's
ReferencedSOPSequence (STOW-RS), a Success or Warning status (C-STORE). Senders are
synchronous; the deliverer runs them in a thread.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from service.settings import parse_ae_address

# Both libraries log UIDs of what they send at INFO; the service logs job ids only.
for _name in ("dicomweb_client", "pynetdicom"):
    logging.getLogger(_name).setLevel(logging.WARNING)

Outcome = dict[str, str | None]
#: C-STORE statuses that mean stored (PS3.4 B.2.3: Success, and the Warning ones)
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


class Sender(Protocol):
    destination: str

    def send(self, objects: Sequence[tuple[str, bytes]]) -> Outcome: ...


def _uids(dataset: pydicom.Dataset, sequence: str) -> set[str]:
    return {str(item.ReferencedSOPInstanceUID) for item in dataset.get(sequence, [])
            if "ReferencedSOPInstanceUID" in item}  # fmt: skip


class StowSender:
    """STOW-RS to ``url``: a DICOMweb base (``…/dicom-web``) or its ``…/studies`` resource;
    ``user:password@`` in the URL becomes HTTP basic auth."""

    destination = "stow"

    def __init__(self, url: str, *, timeout_s: float = 60.0) -> None:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        path = parts.path.rstrip("/").removesuffix("/studies")
        self.base_url = urlunsplit((parts.scheme, netloc, path, "", ""))
        self.session = requests.Session()
        if parts.username:
            self.session.auth = (parts.username, parts.password or "")
        self.timeout_s = timeout_s

    def send(self, objects: Sequence[tuple[str, bytes]]) -> Outcome:
        client = DICOMwebClient(url=self.base_url, session=self.session)
        datasets = [pydicom.dcmread(io.BytesIO(data)) for _, data in objects]
        uids = [uid for uid, _ in objects]
        try:
            response = client.store_instances(datasets)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            return dict.fromkeys(uids, f"STOW-RS answered HTTP {status}")
        except requests.RequestException as exc:
            return dict.fromkeys(uids, f"STOW-RS request failed ({type(exc).__name__})")
        failed = _uids(response, "FailedSOPSequence")
        referenced = _uids(response, "ReferencedSOPSequence")
        # dicomweb-client raises for 4xx/5xx; a 2xx without a parsable body is a 200 (all
        # stored, PS3.18 10.5.3). With a body, only what it references is confirmed.
        confirm_all = not referenced and not failed
        return {
            uid: None if (confirm_all or uid in referenced) and uid not in failed
            else "the STOW-RS receiver did not confirm this instance"
            for uid in uids
        }  # fmt: skip


class CStoreSender:
    """C-STORE to ``AET@host:port``, calling as ``calling_aet``; one association per batch."""

    destination = "dimse"

    def __init__(self, address: str, *, calling_aet: str, timeout_s: float = 60.0) -> None:
        self.called_aet, self.host, self.port = parse_ae_address(address)
        self.calling_aet = calling_aet
        self.timeout_s = timeout_s

    def send(self, objects: Sequence[tuple[str, bytes]]) -> Outcome:
        datasets = [(uid, pydicom.dcmread(io.BytesIO(data))) for uid, data in objects]
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for sop_class in sorted({str(ds.SOPClassUID) for _, ds in datasets}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet)
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "not established"
            return dict.fromkeys([uid for uid, _ in datasets], f"association {why}")
        outcome: Outcome = {}
        try:
            for uid, ds in datasets:
                try:
                    status = assoc.send_c_store(ds)
                except (ValueError, RuntimeError) as exc:
                    outcome[uid] = f"C-STORE not sent ({type(exc).__name__})"
                    continue
                code = int(status.Status) if "Status" in status else None
                outcome[uid] = None if code in STORED_STATUSES else (
                    "no C-STORE response" if code is None else f"C-STORE status 0x{code:04X}"
                )  # fmt: skip
        finally:
            if assoc.is_established:
                assoc.release()
        return outcome
