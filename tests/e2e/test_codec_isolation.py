"""Planted codec faults against a real server: each costs one request, never the service.

The server loads ``tests.service.planted_codecs`` in its decode workers
(``SHARPCXR_DECODER_PLUGINS``): a pydicom RLE plugin that aborts, segfaults, spins or
allocates without bound on a marked frame, as broken native codecs do.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server
from tests.service import planted_codecs
from tests.service.conftest import PATIENT_ID, PATIENT_NAME, phantom, phantom_dicom

TIMEOUT_S = 2.0
FAULTS = [
    (planted_codecs.ABORT, "decoder_crashed", "crashed"),
    (planted_codecs.SEGFAULT, "decoder_crashed", "crashed"),
    (planted_codecs.HANG, "decode_timeout", "timeout"),
    (planted_codecs.HOG, "decode_memory_exceeded", "memory"),
]


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(
        models_dir,
        tmp_path_factory.mktemp("isolation") / "service.log",
        default_resolution="256",
        decoder_plugins="tests.service.planted_codecs",
        decode_timeout_s=str(TIMEOUT_S),
        decode_workers="2",
    )
    yield s
    s.stop()


def _predict(server: Server, body: bytes) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/predict",
        content=body,
        headers={"content-type": "application/dicom"},
        timeout=60,
    )


def _failures(server: Server) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'^sharpcxr_decoder_failures_total\{reason="(\w+)"\} (\S+)$', text, re.M
        )
    }


@pytest.mark.parametrize(
    ("marker", "code", "reason"), FAULTS, ids=["abort", "segfault", "hang", "hog"]
)
def test_a_planted_fault_is_one_422_and_the_service_goes_on(
    server: Server, marker: bytes, code: str, reason: str
) -> None:
    good = phantom_dicom(phantom(3, size=512))
    before = _failures(server).get(reason, 0.0)
    r = _predict(server, planted_codecs.planted_rle(marker))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert "SHARPCXR_DECODE" in error["message"] or "restarted" in error["message"]
    assert _failures(server)[reason] == before + 1
    # the service answers at once, on both workers, and the process is the same
    for _ in range(3):
        ok = _predict(server, good)
        assert ok.status_code == 200 and 0.0 <= ok.json()["probability"] <= 1.0
    assert httpx.get(server.url + "/readyz", timeout=5).status_code == 200
    assert server.process.poll() is None


def test_a_hanging_image_does_not_hold_up_other_requests(server: Server) -> None:
    good = phantom_dicom(phantom(4, size=512))
    hung: list[httpx.Response] = []
    t = threading.Thread(
        target=lambda: hung.append(
            _predict(server, planted_codecs.planted_rle(planted_codecs.HANG))
        )
    )
    t.start()
    time.sleep(0.3)  # the hang holds one worker now
    started = time.monotonic()
    ok = _predict(server, good)
    elapsed = time.monotonic() - started
    t.join(30)
    assert ok.status_code == 200
    assert elapsed < TIMEOUT_S  # served by the other worker, not after the hang's limit
    assert hung[0].status_code == 422 and hung[0].json()["error"]["code"] == "decode_timeout"


def test_the_log_names_the_fault_and_no_patient(server: Server) -> None:
    log = server.log()
    lost = [line for line in log.splitlines() if '"decode worker lost"' in line]
    assert {r for r in ("crashed", "timeout", "memory") if any(f'"{r}"' in x for x in lost)} == {
        "crashed",
        "timeout",
        "memory",
    }
    assert PATIENT_NAME not in log and PATIENT_ID not in log
    assert "Doe^Jane" not in log and "PID-12345" not in log  # planted_rle's patient
    assert "Traceback" not in log
