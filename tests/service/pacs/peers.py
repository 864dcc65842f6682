"""Real DICOM peers on loopback for the PACS tests: a storage SCP that records what it is
sent (a PACS stand-in receiving results) and a C-STORE SCU (a modality)."""

from __future__ import annotations

import io
import socket
import threading
import time
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComprehensiveSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    SegmentationStorage,
    StudyRootQueryRetrieveInformationModelFind,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ResultReceiver:
    """A storage SCP that records every SOP Instance UID it is sent (a PACS stand-in)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[str] = []
        self.lock = threading.Lock()
        self.ae = AE(ae_title="RECEIVER")
        for sop in (
            SegmentationStorage,
            ComprehensiveSRStorage,
            GrayscaleSoftcopyPresentationStateStorage,
        ):
            self.ae.add_supported_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        self.server: Any = None

    def _on_store(self, event: Any) -> int:
        with self.lock:
            self.received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    def _on_find(self, event: Any) -> Any:
        """IMAGE-level C-FIND by SOP Instance UID over what was received."""
        uid = str(event.identifier.get("SOPInstanceUID", ""))
        with self.lock:
            held = uid in self.received
        if held:
            match = pydicom.Dataset()
            match.QueryRetrieveLevel = "IMAGE"
            match.SOPInstanceUID = uid
            yield 0xFF00, match
        yield 0x0000, None

    def start(self) -> ResultReceiver:
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_FIND, self._on_find)],
        )
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()

    def wait_for(self, count: int, timeout_s: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.1)
        raise AssertionError(f"received {len(self.received)} of {count} in {timeout_s} s")


def c_store(port: int, data: bytes, *, calling: str = "MODALITY") -> tuple[bool, int | None]:
    """Send one instance from a pynetdicom SCU: ``(association accepted, C-STORE status)``."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ae = AE(ae_title=calling)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="SHARPCXR")
    if not assoc.is_established:
        return False, None
    try:
        status = assoc.send_c_store(ds)
        return True, int(status.Status) if "Status" in status else None
    finally:
        assoc.release()
