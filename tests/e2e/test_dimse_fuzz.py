"""Fuzzing the C-STORE SCP of a real server: malformed PDUs and malformed datasets.

Two layers, both against ``python -m service`` with ``SHARPCXR_DICOM_PORT`` set:

* **PDUs**: a real A-ASSOCIATE-RQ (captured from pynetdicom's SCU) mutated (bytes flipped,
  lengths changed, cut short, garbage appended) and written to the listener raw; and
  random bytes. The listener must answer or close, never hang, and accept associations
  again within the ACSE timeout (pynetdicom keeps a malformed connection's slot until
  then: found by this test, bounded by ``SHARPCXR_DICOM_ACSE_TIMEOUT_S``).
* **datasets**: valid instances mutated (bytes and element lengths) and sent as raw file
  bytes by C-STORE (pynetdicom's chunked send does not re-encode them). Every C-STORE gets
  a DIMSE status; a success means a job that ends ``done`` or ``refused``/``failed`` with
  a reason, never a crashed worker.

Afterwards the service still answers HTTP and DIMSE, and its log has no traceback and no
patient identifier.
"""

from __future__ import annotations

import random
import socket
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.e2e.conftest import Server, free_port
from tests.service.conftest import PATIENT_ID, PATIENT_NAME, phantom, phantom_dicom
from tests.service.pacs.peers import c_store

PDU_CASES = 150
#: how long a malformed connection may hold an association slot (SHARPCXR_DICOM_ACSE_TIMEOUT_S)
ACSE_TIMEOUT_S = 2.0
DATASET_CASES = 60


@pytest.fixture(scope="module")
def scp(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    s = Server(
        models_dir,
        tmp_path_factory.mktemp("dimse") / "service.log",
        default_resolution="256",
        dicom_port=str(port),
        dicom_acse_timeout_s=str(ACSE_TIMEOUT_S),
    )
    s.dicom_port = port  # type: ignore[attr-defined]
    yield s
    s.stop()


def captured_associate_rq() -> bytes:
    """The A-ASSOCIATE-RQ pynetdicom's SCU sends, read off a socket that never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    got: list[bytes] = []

    def accept() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5)
        data = b""
        while len(data) < 6 or len(data) < 6 + struct.unpack(">I", data[2:6])[0]:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        got.append(data)
        conn.close()

    t = threading.Thread(target=accept)
    t.start()
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.network_timeout = 2
    ae.add_requested_context(Verification)
    ae.associate("127.0.0.1", port, ae_title="SHARPCXR")
    t.join(10)
    listener.close()
    assert got and got[0][0] == 0x01, "no A-ASSOCIATE-RQ captured"
    return got[0]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random mutation: flips, a length field changed, a cut, an insertion."""
    b = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # a 16- or 32-bit big-endian length somewhere: absurd values
        at = rng.randrange(len(b) - 4)
        value = rng.choice([0, 1, 0xFFFF, 0xFFFFFFFF, rng.randrange(1 << 32)])
        b[at : at + 4] = struct.pack(">I", value)
    elif kind == 2:
        b = b[: rng.randrange(1, len(b))]
    elif kind == 3:
        at = rng.randrange(len(b))
        b[at:at] = rng.randbytes(rng.randint(1, 64))
    else:
        b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


def send_raw(port: int, data: bytes) -> str:
    """Write ``data`` to the listener and read until it answers or closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        try:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
            reply = conn.recv(6)
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except TimeoutError:
            return "timeout"
    return {1: "a-associate-rq?", 2: "accepted", 3: "rejected", 7: "aborted"}.get(
        reply[0] if reply else 0, "closed" if not reply else f"pdu-{reply[0]}"
    )


def echo_ok(port: int) -> bool:
    ae = AE(ae_title="CHECK")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="SHARPCXR")
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


def test_malformed_pdus_never_wedge_the_listener(scp: Server) -> None:
    port = scp.dicom_port  # type: ignore[attr-defined]
    rq = captured_associate_rq()
    rng = random.Random(16)
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    for i in range(PDU_CASES):
        data = rng.randbytes(rng.randint(1, 300)) if i % 10 == 0 else mutate(rq, rng)
        outcomes[send_raw(port, data)] += 1
    elapsed = time.monotonic() - started
    print(f"{PDU_CASES} PDU cases in {elapsed:.1f} s: {dict(outcomes)}")
    assert "timeout" not in outcomes
    # pynetdicom holds each malformed connection's slot until the ACSE timeout; a flood of
    # them may fill every slot (later ones are rejected, transient), never for longer
    deadline = time.monotonic() + ACSE_TIMEOUT_S + 5
    while not echo_ok(port):
        assert time.monotonic() < deadline, "the DICOM listener did not recover"
        time.sleep(0.5)
    print(f"C-ECHO answered {time.monotonic() - started - elapsed:.1f} s after the flood")
    assert httpx.get(scp.url + "/readyz", timeout=5).status_code == 200


def test_malformed_datasets_get_a_status_and_the_service_goes_on(scp: Server) -> None:
    port = scp.dicom_port  # type: ignore[attr-defined]
    seeds = [phantom_dicom(phantom(i, size=256)) for i in range(3)]
    rng = random.Random(61)
    statuses: Counter[str] = Counter()
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the mutated bytes as they are
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(DATASET_CASES):
                seed = seeds[i % len(seeds)]
                # keep the preamble and file meta readable so the SCU can send it at all
                body = seed[:300] + mutate(seed[300:], rng)
                path = Path(tmp) / f"{i}.dcm"
                path.write_bytes(body)
                try:
                    accepted, status = c_store_path(port, path)
                except Exception as exc:  # the SCU could not even read it: not sent
                    statuses[f"unsendable:{type(exc).__name__}"] += 1
                    continue
                statuses["no-association" if not accepted else f"0x{status or 0:04X}"] += 1
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    print(f"{DATASET_CASES} dataset cases: {dict(statuses)}")
    assert sum(n for k, n in statuses.items() if k.startswith("0x")) > DATASET_CASES // 2
    assert "no-association" not in statuses
    # the service is fine: a real instance is stored and processed
    assert c_store(port, seeds[0])[1] == 0
    assert httpx.get(scp.url + "/readyz", timeout=5).status_code == 200
    log = scp.log()
    assert "Traceback" not in log
    assert PATIENT_NAME not in log and PATIENT_ID not in log


def c_store_path(port: int, path: Path) -> tuple[bool, int | None]:
    """C-STORE the file at ``path`` as it is (chunked send): ``(accepted, status)``."""
    from pydicom import dcmread

    meta = dcmread(path, stop_before_pixels=True, force=True)
    ae = AE(ae_title="FUZZER")
    ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(meta.SOPClassUID, meta.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="SHARPCXR")
    if not assoc.is_established:
        return False, None
    try:
        status = assoc.send_c_store(path)
        return True, int(status.Status) if "Status" in status else None
    finally:
        assoc.release()
