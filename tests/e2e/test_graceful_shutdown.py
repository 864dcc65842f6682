"""SIGTERM under load: a real server stops admitting, finishes what it accepted, exits 0.

Clients keep sending predicts from several threads while the signal arrives. Every request
is classified by what the client saw: a full 200 answer, a 503 ``shutting_down`` with
Retry-After (refused cleanly: the client retries elsewhere), or a refused connection once
the listener is closed. Nothing else is allowed: no reset mid-answer, no 5xx of another
kind, no request sent before the signal without its answer. With the PACS job store,
every instance STOW-RS accepted before the exit is done after a restart.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pydicom

from service.pacs.related import encode_related
from tests.e2e.conftest import Server, free_port
from tests.service.conftest import phantom, phantom_dicom
from tests.service.pacs.peers import c_store

CLIENTS = 6


def _load(server: Server, body: bytes, stop: threading.Event, outcomes: list[tuple]) -> None:
    """Predicts until ``stop``: ``(sent_at, outcome)`` per request."""
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                r = client.post(
                    server.url + "/v1/predict?resolution=256&heatmap=true",
                    content=body,
                    headers={"content-type": "application/dicom"},
                )
            except httpx.ConnectError:
                outcomes.append((sent, "refused_connection"))
                time.sleep(0.05)
                continue
            except httpx.TransportError as exc:
                # closed before any answer: a connection the server had not read a request
                # from when it closed (the listen backlog, a fresh keep-alive); allowed only
                # after the signal (checked below), never for an accepted request
                outcomes.append((sent, f"unanswered:{type(exc).__name__}"))
                continue
            if r.status_code == 200 and "probability" in r.json():
                outcomes.append((sent, "ok"))
            elif r.status_code == 503 and r.json()["error"]["code"] == "shutting_down":
                assert int(r.headers["retry-after"]) >= 1
                outcomes.append((sent, "shutting_down"))
                time.sleep(0.02)  # a client that honours Retry-After would go elsewhere
            else:
                outcomes.append((sent, f"status:{r.status_code}"))


def test_sigterm_under_load_finishes_every_accepted_request(
    models_dir: Path, tmp_path: Path
) -> None:
    server = Server(
        models_dir,
        tmp_path / "service.log",
        default_resolution="256",
        drain_min_s="2",
        shutdown_timeout_s="30",
    )
    body = phantom_dicom(phantom(1, size=1024))
    stop = threading.Event()
    outcomes: list[tuple] = []
    threads = [
        threading.Thread(target=_load, args=(server, body, stop, outcomes)) for _ in range(CLIENTS)
    ]
    try:
        for t in threads:
            t.start()
        time.sleep(3.0)  # a steady state: every client has requests in flight
        signalled = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        # during the drain window /readyz says so; /healthz still answers
        time.sleep(0.5)
        ready = httpx.get(server.url + "/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert ready.headers["retry-after"]
        assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
        metrics = httpx.get(server.url + "/metrics", timeout=5).text
        assert "sharpcxr_draining 1.0" in metrics and "sharpcxr_ready 0.0" in metrics
        code = server.process.wait(timeout=45)
        exited = time.monotonic() - signalled
    finally:
        stop.set()
        for t in threads:
            t.join(90)
        server.stop()
    counts = Counter(outcome for _, outcome in outcomes)
    print(f"outcomes: {dict(counts)}; exit {code} after {exited:.1f} s")
    assert code == 0
    assert exited < 30 + 10  # shutdown_timeout_s, plus uvicorn's close and the runtime stop
    # 1 s margin: on 2 busy cores a request sent just before the signal may reach the
    # server after it (and is then refused cleanly, as it should be)
    before = [o for sent, o in outcomes if sent < signalled - 1.0]
    assert before and set(before) == {"ok"}, Counter(before)  # accepted -> answered
    after = {o.split(":")[0] for sent, o in outcomes if sent >= signalled - 1.0}
    assert after <= {"ok", "shutting_down", "refused_connection", "unanswered"}, counts
    assert counts["shutting_down"] > 0  # the drain window refused new work cleanly
    log = server.log()
    assert '"draining' in log and '"drained"' in log
    assert "Traceback" not in log


def test_sigterm_loses_no_stow_or_c_store_instance(models_dir: Path, tmp_path: Path) -> None:
    dicom_port = free_port()
    settings = {
        "default_resolution": "256",
        "data_dir": str(tmp_path / "data"),
        "drain_min_s": "2",  # the listener stays open long enough to see the refusal
        "dicom_port": str(dicom_port),
    }
    instances = [phantom_dicom(phantom(i, size=320, positive=i % 2 == 0)) for i in range(36)]
    uids = {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID for d in instances}
    study_uids = {pydicom.dcmread(io.BytesIO(d)).StudyInstanceUID for d in instances}
    first = Server(models_dir, tmp_path / "first.log", **settings)
    accepted: set[str] = set()
    try:
        for data in instances[30:34]:  # by C-STORE, before the signal
            assert c_store(dicom_port, data) == (True, 0)
            accepted.add(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
        for start in range(0, 30, 5):
            batch = instances[start : start + 5]
            content_type, payload = encode_related(batch)
            r = httpx.post(
                first.url + "/dicomweb/studies",
                content=payload,
                headers={"content-type": content_type},
                timeout=60,
            )
            assert r.status_code == 200, r.text
            accepted |= {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID for d in batch}
            if start == 10:
                os.kill(first.process.pid, signal.SIGTERM)  # jobs mid-way
                time.sleep(0.3)  # the signal lands within the server's 0.1 s tick
                break
        content_type, payload = encode_related(instances[20:25])
        refused = httpx.post(
            first.url + "/dicomweb/studies",
            content=payload,
            headers={"content-type": content_type},
            timeout=60,
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "shutting_down"
        # the DICOM listener closed at the signal: the association is refused, not lost
        assert c_store(dicom_port, instances[34]) == (False, None)
        assert first.process.wait(timeout=60) == 0
    finally:
        first.stop()
    assert accepted < uids
    second = Server(models_dir, tmp_path / "second.log", **settings)
    try:
        deadline = time.monotonic() + 180
        while True:
            jobs = _jobs(second, study_uids)
            if sum(j["state"] == "done" for j in jobs) >= len(accepted):
                break
            assert time.monotonic() < deadline, "accepted jobs not done after the restart"
            time.sleep(0.3)
        assert {j["sop_instance_uid"] for j in jobs} == accepted  # every one, nothing else
        assert all(j["state"] == "done" for j in jobs)
    finally:
        second.stop()


def _jobs(server: Server, study_uids: set[str]) -> list[dict]:
    jobs: list[dict] = []
    for study in study_uids:
        r = httpx.get(f"{server.url}/v1/studies/{study}/results", timeout=10)
        if r.status_code == 200:
            jobs += r.json()["instances"]
    return jobs
