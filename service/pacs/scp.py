"""The C-STORE SCP (pynetdicom): DICOM networking in, for senders that do not speak DICOMweb.

Listens on ``dicom_host:dicom_port`` as ``dicom_ae_title``; callers are limited to
``dicom_allowed_aes`` when it is set (others get an association rejection). It offers
Verification (C-ECHO) and the storage SOP classes a chest radiograph comes in (CR, DX for
presentation and for processing, Secondary Capture), each with every transfer syntax the
service decodes, so a sender never has to transcode and never gets an image the service
cannot read. A C-STORE is answered Success only after the instance is in the job store
(the same checks as STOW-RS parts: :func:`service.pacs.stow.inspect_instance`); a refusal
maps to the DIMSE status of the same failure reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from imaging.decoders import DECODABLE_TRANSFER_SYNTAXES
from service.pacs.stow import OUT_OF_RESOURCES, Instance, PartRefused, inspect_instance

log = logging.getLogger(__name__)

STORAGE_SOP_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
SUCCESS = 0x0000

#: stores one instance durably: ``(job id, created)``; blocking, called per C-STORE
Receive = Callable[[Instance, str], tuple[str, bool]]


class StorageSCP:
    def __init__(
        self,
        receive: Receive,
        *,
        host: str,
        port: int,
        ae_title: str,
        allowed_aes: list[str],
        max_instance_bytes: int,
        acse_timeout_s: float = 10.0,
        max_associations: int = 32,
    ) -> None:
        """``acse_timeout_s``: pynetdicom holds an association slot until an association
        request arrives or this passes, even when the peer sent garbage and closed, so it
        bounds how long a malformed connection occupies one of ``max_associations``."""
        self.receive = receive
        self.address = (host, port)
        self.max_instance_bytes = max_instance_bytes
        self.ae = AE(ae_title=ae_title)
        for sop_class in STORAGE_SOP_CLASSES:
            self.ae.add_supported_context(sop_class, list(DECODABLE_TRANSFER_SYNTAXES))
        self.ae.add_supported_context(Verification)
        if allowed_aes:
            self.ae.require_calling_aet = list(allowed_aes)
        self.ae.maximum_associations = max_associations
        self.ae.network_timeout = self.ae.dimse_timeout = 60
        self.ae.acse_timeout = acse_timeout_s
        self.server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self.server is not None, "start() first"
        return int(self.server.server_address[1])

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self.server = self.ae.start_server(self.address, block=False, evt_handlers=handlers)
        log.info("DICOM listener started", extra={"host": self.address[0], "port": self.port})

    def stop(self) -> None:
        """Stop listening (new associations are refused at connect; senders retry).
        Associations already open run on in their own threads."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def active(self) -> int:
        """Associations in progress: a C-STORE being received counts until released."""
        return len(self.ae.active_associations)

    def _on_rejected(self, event: Event) -> None:
        log.warning("association rejected", extra={"code": "association_rejected"})

    def _on_store(self, event: Event) -> int:
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception:  # pynetdicom could not build the file meta: we cannot read it
            log.warning("C-STORE dataset unreadable", extra={"code": "corrupt_dicom"})
            return 0xC000
        if len(data) > self.max_instance_bytes:
            log.warning("C-STORE refused", extra={"code": "too_large", "bytes": len(data)})
            return OUT_OF_RESOURCES
        try:
            instance = inspect_instance(data, expected_study_uid=None)
        except PartRefused as refused:
            log.info("C-STORE refused", extra={"code": f"0x{refused.failure_reason:04X}"})
            return refused.failure_reason
        try:
            self.receive(instance, "dimse")
        except Exception:
            log.exception("C-STORE not stored", extra={"code": "store_error"})
            return OUT_OF_RESOURCES
        return SUCCESS
