"""A real Orthanc (with its DICOMweb plugin) for the end-to-end PACS tests.

:class:`Orthanc` starts a private ``Orthanc`` process on free loopback ports, with its
storage, index and log in a temporary directory, and wraps its REST and DICOMweb APIs.
:class:`StorageSCP` (a pynetdicom C-STORE SCP) and :class:`StowRecorder` (a recording
HTTP STOW-RS server) are the two kinds of peers Orthanc can send to.

Fixtures are plain generator functions (:func:`orthanc_instance`,
:func:`orthanc_factory_instance`) plus the ready-made pytest fixtures :func:`orthanc`
and :func:`orthanc_factory`, so a conftest or a test module can import whichever fits.
Everything skips with :data:`SKIP_REASON` when Orthanc is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import httpx
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt

SKIP_REASON = (
    "Orthanc is not installed: `apt-get install orthanc orthanc-dicomweb` "
    "(CI installs it via .ci/run)"
)

#: Where Debian/Ubuntu put things; ORTHANC_BINARY / ORTHANC_DICOMWEB_PLUGIN override.
_BINARY_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc", "/usr/local/bin/Orthanc")
_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)

DICOM_JSON = "application/dicom+json"
#: The tags of a DICOM JSON object (QIDO-RS answers).
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
TAG_SOP_CLASS_UID = "00080016"
TAG_SOP_INSTANCE_UID = "00080018"
TAG_STUDY_INSTANCE_UID = "0020000D"
TAG_SERIES_INSTANCE_UID = "0020000E"
TAG_REFERENCED_SOP_SEQUENCE = "00081199"
TAG_FAILED_SOP_SEQUENCE = "00081198"
TAG_REFERENCED_SOP_CLASS_UID = "00081150"
TAG_REFERENCED_SOP_INSTANCE_UID = "00081155"
TAG_RETRIEVE_URL = "00081190"


def find_orthanc() -> tuple[Path, Path] | None:
    """(the Orthanc binary, the DICOMweb plugin), or None when either is missing."""
    binary = _first_file(
        os.environ.get("ORTHANC_BINARY"), shutil.which("Orthanc"), *_BINARY_CANDIDATES
    )
    plugin = _first_file(os.environ.get("ORTHANC_DICOMWEB_PLUGIN"), *_PLUGIN_CANDIDATES)
    if binary is None or plugin is None:
        return None
    return binary, plugin


def _first_file(*candidates: str | None) -> Path | None:
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


#: ``pytestmark = requires_orthanc`` in a test module.
requires_orthanc = pytest.mark.skipif(find_orthanc() is None, reason=SKIP_REASON)


def free_port() -> int:
    """A loopback port that was free a moment ago (bound to 0, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OrthancError(RuntimeError):
    """Orthanc did not start, or a REST call failed (the message has the log tail)."""


class FoundInstance(NamedTuple):
    orthanc_id: str
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str


#: A DicomModalities entry: (AET, host, port).
Modality = tuple[str, str, int]
#: A DicomWeb.Servers entry: its URL, or a full entry such as
#: ``{"Url": ..., "HttpHeaders": {"X-API-Key": "..."}, "ChunkedTransfers": False}``.
DicomWebServer = str | dict[str, Any]

#: What Orthanc 1.10 logs when HttpPort / DicomPort is taken ("The TCP port of the HTTP
#: server is privileged or already in use").
_PORT_IN_USE = re.compile(r"(?i)already in use|cannot bind")


class Orthanc:
    """A private Orthanc process; a context manager, or ``start()`` / ``stop()``.

    ``modalities``: DicomModalities, name -> (AET, host, port): Orthanc's C-STORE targets.
    ``dicomweb_servers``: DicomWeb.Servers, name -> URL or full entry: its STOW-RS targets.
    ``config``: further configuration options, merged over the defaults.
    """

    aet = "ORTHANC"
    host = "127.0.0.1"

    def __init__(
        self,
        modalities: dict[str, Modality] | None = None,
        dicomweb_servers: dict[str, DicomWebServer] | None = None,
        *,
        workdir: Path | None = None,
        config: dict[str, Any] | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        found = find_orthanc()
        if found is None:
            raise OrthancError(SKIP_REASON)
        self.binary, self.plugin = found
        self.modalities = dict(modalities or {})
        self.dicomweb_servers = dict(dicomweb_servers or {})
        self.extra_config = dict(config or {})
        self.startup_timeout_s = startup_timeout_s
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="orthanc-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self.http_port = 0
        self.dicom_port = 0
        self.startup_s = 0.0
        self.process: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None

    # -- addresses ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS, STOW-RS), without a trailing slash."""
        return f"{self.url}/dicom-web"

    @property
    def stow_url(self) -> str:
        """Orthanc's own STOW-RS endpoint: POST multipart/related here to store into it."""
        return f"{self.dicomweb_url}/studies"

    @property
    def http(self) -> httpx.Client:
        if self._client is None:
            raise OrthancError("Orthanc is not started")
        return self._client

    # -- life cycle ----------------------------------------------------------------------

    def configuration(self) -> dict[str, Any]:
        """The JSON configuration written for the current ports."""
        storage = str(self.workdir / "storage")
        config: dict[str, Any] = {
            "Name": "sharpcxr-e2e",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # loopback only ...
            "AuthenticationEnabled": False,  # ... so no users are needed
            "HttpDescribeErrors": True,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomScuTimeout": 10,
            "DicomModalities": {
                name: [aet, host, port] for name, (aet, host, port) in self.modalities.items()
            },
            "Plugins": [str(self.plugin)],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": False,
                "Servers": {
                    name: (entry if isinstance(entry, dict) else {"Url": entry})
                    for name, entry in self.dicomweb_servers.items()
                },
            },
            "HttpTimeout": 30,
            "StableAge": 1,
            "ConcurrentJobs": 2,
            "SaveJobs": False,
            "JobsHistorySize": 100,
            "DeidentifyLogs": True,
            "MetricsEnabled": False,
        }
        config.update(self.extra_config)
        return config

    def start(self) -> Orthanc:
        for attempt in (1, 2):  # a port taken between bind(0) and Orthanc: retry once
            self.http_port, self.dicom_port = free_port(), free_port()
            while self.dicom_port == self.http_port:
                self.dicom_port = free_port()
            self.config_path.write_text(json.dumps(self.configuration(), indent=2))
            try:
                self._launch()
                return self
            except OrthancError:
                self.stop(_remove=False)
                if attempt == 1 and _PORT_IN_USE.search(self.log_tail()):
                    continue
                raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        begun = time.monotonic()
        self.log_path.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [str(self.binary), f"--logfile={self.log_path}", str(self.config_path)],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._client = httpx.Client(base_url=self.url, timeout=60)
        deadline = begun + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited at start-up (rc {self.process.returncode}):\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if self._client.get("/system", timeout=2).status_code == 200:
                    self.startup_s = time.monotonic() - begun
                    return
            time.sleep(0.05)
        raise OrthancError(
            f"Orthanc did not answer /system within {self.startup_timeout_s} s:\n{self.log_tail()}"
        )

    def stop(self, *, _remove: bool = True) -> None:
        """Terminate Orthanc and wait for it (kill after 20 s); the workdir stays when
        it was given, else it is removed."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
            self.process = None
        if _remove and self._own_workdir and os.environ.get("ORTHANC_KEEP_WORKDIR") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no Orthanc log)"

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # -- REST helpers --------------------------------------------------------------------

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        raise OrthancError(
            f"{response.request.method} {response.request.url.path} -> "
            f"{response.status_code}: {response.text[:2000]}\n--- Orthanc log ---\n"
            f"{self.log_tail(30)}"
        )

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self._check(self.http.get(path, **kwargs)).json()

    def post_json(self, path: str, body: Any, **kwargs: Any) -> Any:
        return self._check(self.http.post(path, json=body, **kwargs)).json()

    def upload(self, dicom_bytes: bytes) -> dict[str, Any]:
        """POST /instances: {"ID", "ParentPatient", "ParentStudy", "ParentSeries", "Path",
        "Status" ("Success" | "AlreadyStored")}."""
        response = self.http.post(
            "/instances", content=dicom_bytes, headers={"Content-Type": "application/dicom"}
        )
        answer: dict[str, Any] = self._check(response).json()
        return answer

    def echo(self, modality: str) -> bool:
        """C-ECHO from Orthanc to a DicomModalities entry."""
        return self.http.post(f"/modalities/{modality}/echo", json={}).is_success

    def store_to_modality(
        self, modality: str, orthanc_ids: Sequence[str], synchronous: bool = True
    ) -> dict[str, Any]:
        """C-STORE (Orthanc as SCU) of instances/series/studies to a modality; synchronous:
        the job's answer, else {"ID", "Path"} of the job (see :meth:`wait_for_job`)."""
        body = {"Resources": list(orthanc_ids), "Synchronous": synchronous}
        answer: dict[str, Any] = self.post_json(f"/modalities/{modality}/store", body)
        return answer

    def stow_to_server(
        self,
        server: str,
        orthanc_ids: Sequence[str],
        *,
        synchronous: bool = True,
        http_headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """STOW-RS (Orthanc's DICOMweb client) of resources to a DicomWeb.Servers entry;
        raises :class:`OrthancError` when the job fails (server error, bad answer)."""
        body: dict[str, Any] = {"Resources": list(orthanc_ids), "Synchronous": synchronous}
        if http_headers:
            body["HttpHeaders"] = http_headers
        answer: dict[str, Any] = self.post_json(f"/dicom-web/servers/{server}/stow", body)
        return answer

    def wait_for_job(self, job_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            job: dict[str, Any] = self.get_json(f"/jobs/{job_id}")
            if job["State"] in ("Success", "Failure"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['State']}:\n{self.log_tail()}")
            time.sleep(0.1)

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Register (or replace) a DicomModalities entry at run time."""
        self._check(self.http.put(f"/modalities/{name}", json=[aet, host, port]))
        self.modalities[name] = (aet, host, port)

    def add_dicomweb_server(
        self, name: str, url: str, http_headers: dict[str, str] | None = None, **options: Any
    ) -> None:
        """Register (or replace) a DicomWeb.Servers entry at run time (``options``: e.g.
        ``ChunkedTransfers=False``)."""
        entry: dict[str, Any] = {"Url": url, **options}
        if http_headers:
            entry["HttpHeaders"] = http_headers
        self._check(self.http.put(f"/dicom-web/servers/{name}", json=entry))
        self.dicomweb_servers[name] = entry

    # -- DICOMweb and lookups ------------------------------------------------------------

    def _qido(self, path: str) -> list[dict[str, Any]]:
        response = self._check(self.http.get(path, headers={"Accept": DICOM_JSON}))
        if response.status_code == 204 or not response.content:
            return []
        answer: list[dict[str, Any]] = response.json()
        return answer

    def qido_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """QIDO-RS GET /dicom-web/studies/{uid}/instances: DICOM JSON objects."""
        return self._qido(f"/dicom-web/studies/{study_uid}/instances")

    def series_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """QIDO-RS GET /dicom-web/studies/{uid}/series: DICOM JSON objects."""
        return self._qido(f"/dicom-web/studies/{study_uid}/series")

    def retrieve_instance(
        self, study_uid: str, series_uid: str, instance_uid: str, transfer_syntax: str = "*"
    ) -> bytes:
        """WADO-RS: the Part 10 bytes of one instance (``transfer_syntax="*"``: as stored)."""
        accept = 'multipart/related; type="application/dicom"'
        if transfer_syntax:
            accept += f"; transfer-syntax={transfer_syntax}"
        response = self._check(
            self.http.get(
                f"/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}",
                headers={"Accept": accept},
            )
        )
        parts = parse_multipart(response.headers["content-type"], response.content)
        if len(parts) != 1:
            raise OrthancError(f"WADO-RS answered {len(parts)} parts, expected 1")
        return parts[0].content

    def instance_file(self, orthanc_id: str) -> bytes:
        """Native API: the stored file, byte for byte."""
        return self._check(self.http.get(f"/instances/{orthanc_id}/file")).content

    def instance_metadata(self, orthanc_id: str) -> dict[str, str]:
        """Orthanc's metadata: "TransferSyntax", "SopClassUid", "RemoteAET", "Origin", ..."""
        answer: dict[str, str] = self.get_json(f"/instances/{orthanc_id}/metadata?expand")
        return answer

    def find_instances(self, study_uid: str) -> list[FoundInstance]:
        """The stored instances of a study, ordered by SOP Instance UID."""
        found: list[dict[str, Any]] = self.post_json(
            "/tools/find",
            {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
        )
        series_uids: dict[str, str] = {}
        result = []
        for instance in found:
            series_id = instance["ParentSeries"]
            if series_id not in series_uids:
                series = self.get_json(f"/series/{series_id}")
                series_uids[series_id] = series["MainDicomTags"]["SeriesInstanceUID"]
            metadata = self.instance_metadata(instance["ID"])
            result.append(
                FoundInstance(
                    orthanc_id=instance["ID"],
                    sop_class_uid=metadata.get("SopClassUid", ""),
                    sop_instance_uid=instance["MainDicomTags"]["SOPInstanceUID"],
                    series_uid=series_uids[series_id],
                )
            )
        return sorted(result, key=lambda f: f.sop_instance_uid)

    def wait_for_instances(
        self, study_uid: str, count: int, timeout_s: float = 30.0
    ) -> list[FoundInstance]:
        """Poll until the study holds at least ``count`` instances."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.find_instances(study_uid)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"study {study_uid}: {len(found)} of {count} instances after "
                    f"{timeout_s} s\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def delete_all(self) -> None:
        """Delete every patient (so every study, series and instance)."""
        for patient in self.get_json("/patients"):
            self._check(self.http.delete(f"/patients/{patient}"))


# -- multipart/related ---------------------------------------------------------------------


@dataclass
class Part:
    headers: dict[str, str]  # lower-case names
    content: bytes


def multipart_boundary(content_type: str) -> str:
    match = re.search(r'(?i)boundary=(?:"([^"]+)"|([^;\s]+))', content_type)
    if match is None:
        raise ValueError(f"no boundary in {content_type!r}")
    return match.group(1) or match.group(2)


def parse_multipart(content_type: str, body: bytes) -> list[Part]:
    """Split a multipart body (RFC 2046: preamble, CRLF--boundary delimiters, epilogue)."""
    delimiter = b"--" + multipart_boundary(content_type).encode()
    chunks = (b"\r\n" + body).split(b"\r\n" + delimiter)
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # close delimiter
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("a multipart part without a header/body separator")
        headers = {}
        for line in head.split(b"\r\n")[1:]:  # [0]: the rest of the delimiter line
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append(Part(headers, content))
    return parts


# -- peers Orthanc sends to ----------------------------------------------------------------


@dataclass
class Received:
    """One C-STORE received by :class:`StorageSCP`."""

    dataset: Any  # pydicom Dataset, file_meta included
    transfer_syntax: str  # of the accepted presentation context
    calling_aet: str
    proposed: list[tuple[str, list[str]]]  # the association's (abstract syntax, [ts...])


class StorageSCP:
    """A pynetdicom C-STORE SCP on a free loopback port, recording what it receives.

    ``contexts``: (SOP class UID, [transfer syntax UIDs]); default: every storage class
    with every transfer syntax pynetdicom knows. ``status``: the C-STORE status returned.
    """

    def __init__(
        self,
        aet: str = "STORESCP",
        contexts: Sequence[tuple[str, Sequence[str]]] | None = None,
        status: int = 0x0000,
    ) -> None:
        self.aet = aet
        self.host = "127.0.0.1"
        self.port = 0
        self.contexts = contexts
        self.status = status
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server: Any = None

    @property
    def modality(self) -> Modality:
        return (self.aet, self.host, self.port)

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        proposed = [
            (str(cx.abstract_syntax), [str(ts) for ts in cx.transfer_syntax])
            for cx in event.assoc.requestor.requested_contexts
        ]
        with self._lock:
            self.received.append(
                Received(
                    ds,
                    str(event.context.transfer_syntax),
                    str(event.assoc.requestor.ae_title).strip(),
                    proposed,
                )
            )
        return self.status

    def start(self) -> StorageSCP:
        ae = AE(ae_title=self.aet)
        if self.contexts is None:
            for cx in StoragePresentationContexts:
                ae.add_supported_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        else:
            for sop_class, syntaxes in self.contexts:
                ae.add_supported_context(sop_class, list(syntaxes))
        ae.add_supported_context(VERIFICATION_SOP_CLASS)
        for attempt in (1, 2):
            self.port = free_port()
            try:
                self._server = ae.start_server(
                    (self.host, self.port),
                    block=False,
                    evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
                )
                break
            except OSError:
                if attempt == 2:
                    raise
        return self

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        raise TimeoutError(f"{len(self.received)} of {count} C-STOREs after {timeout_s} s")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> StorageSCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class RecordedRequest:
    """One HTTP request received by :class:`StowRecorder`, exactly as sent."""

    method: str
    path: str  # the request-target, query included
    request_line: str
    headers: list[tuple[str, str]]  # in order, as sent
    body: bytes  # de-chunked when Transfer-Encoding: chunked
    chunk_sizes: list[int] = field(default_factory=list)  # empty: not chunked

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def parts(self) -> list[Part]:
        return parse_multipart(self.header("Content-Type") or "", self.body)


#: (status, headers, body) for a request.
Responder = Callable[[RecordedRequest], tuple[int, dict[str, str], bytes]]


def stow_success(request: RecordedRequest) -> tuple[int, dict[str, str], bytes]:
    """A correct STOW-RS answer: 200, DICOM JSON, one ReferencedSOPSequence item a part."""
    items = []
    for part in request.parts:
        ds = pydicom.dcmread(DicomBytesIO(part.content), stop_before_pixels=True)
        items.append(
            {
                TAG_REFERENCED_SOP_CLASS_UID: {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                TAG_REFERENCED_SOP_INSTANCE_UID: {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
            }
        )
    body = {TAG_REFERENCED_SOP_SEQUENCE: {"vr": "SQ", "Value": items}}
    return 200, {"Content-Type": DICOM_JSON}, json.dumps(body).encode()


class StowRecorder:
    """A threading HTTP server on a free loopback port recording every request;
    ``responder`` makes the answer (default :func:`stow_success`)."""

    def __init__(self, responder: Responder = stow_success) -> None:
        self.responder = responder
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                chunk_sizes: list[int] = []
                if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
                    body = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        chunk_sizes.append(size)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            break
                        body += self.rfile.read(size)
                        self.rfile.readline()  # CRLF after the chunk
                    data = bytes(body)
                else:
                    data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = RecordedRequest(
                    method=self.command,
                    path=self.path,
                    request_line=self.requestline,
                    headers=list(self.headers.items()),
                    body=data,
                    chunk_sizes=chunk_sizes,
                )
                with recorder._lock:
                    recorder.requests.append(request)
                status, headers, answer = recorder.responder(request)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_POST = do_GET = do_PUT = do_DELETE = _handle  # noqa: N815

        self.host = "127.0.0.1"
        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> StowRecorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StowRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- fixtures ------------------------------------------------------------------------------


def orthanc_instance(
    tmp_path_factory: pytest.TempPathFactory,
    modalities: dict[str, Modality] | None = None,
    dicomweb_servers: dict[str, DicomWebServer] | None = None,
    **kwargs: Any,
) -> Iterator[Orthanc]:
    """Generator for a fixture: one started Orthanc (skips when not installed)."""
    if find_orthanc() is None:
        pytest.skip(SKIP_REASON)
    instance = Orthanc(
        modalities, dicomweb_servers, workdir=tmp_path_factory.mktemp("orthanc"), **kwargs
    )
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


OrthancFactory = Callable[..., Orthanc]


def orthanc_factory_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancFactory]:
    """Generator for a fixture: ``make(modalities=..., dicomweb_servers=..., config=...)``
    starts an Orthanc; all of them stop at teardown."""
    if find_orthanc() is None:
        pytest.skip(SKIP_REASON)
    started: list[Orthanc] = []

    def make(
        modalities: dict[str, Modality] | None = None,
        dicomweb_servers: dict[str, DicomWebServer] | None = None,
        **kwargs: Any,
    ) -> Orthanc:
        instance = Orthanc(
            modalities, dicomweb_servers, workdir=tmp_path_factory.mktemp("orthanc"), **kwargs
        )
        started.append(instance)
        return instance.start()

    try:
        yield make
    finally:
        for instance in started:
            instance.stop()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """A started Orthanc without modalities or DICOMweb servers, for a module."""
    yield from orthanc_instance(tmp_path_factory)


@pytest.fixture
def orthanc_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancFactory]:
    """Start Orthancs configured per test; all stop at the end of the test."""
    yield from orthanc_factory_instance(tmp_path_factory)
