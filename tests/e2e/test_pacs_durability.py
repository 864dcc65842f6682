"""Nothing accepted is lost, nothing is sent twice: a real server killed with SIGKILL while
it processes STOW-RS jobs, restarted on the same job store, results to a real C-STORE peer."""

from __future__ import annotations

import collections
import io
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pydicom
import pytest

from service.pacs.related import encode_related
from tests.e2e.conftest import Server
from tests.service.conftest import phantom, phantom_dicom
from tests.service.pacs.peers import ResultReceiver

INSTANCES = 50


def metric(server: Server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return sum(
        float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    )


def done_jobs(server: Server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    found = re.search(r'^sharpcxr_jobs_total\{source="stow",state="done"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_sigkill_while_processing_loses_nothing_and_sends_nothing_twice(
    models_dir: Path, tmp_path: Path
) -> None:
    receiver = ResultReceiver().start()
    settings = {
        "default_resolution": "256",
        "data_dir": str(tmp_path / "data"),
        "results_ae": f"RECEIVER@127.0.0.1:{receiver.port}",
        "delivery_backoff_s": "0.2",
    }
    instances = [phantom_dicom(phantom(i, size=320, positive=i % 2 == 0)) for i in range(INSTANCES)]
    study_uids = {pydicom.dcmread(io.BytesIO(d)).StudyInstanceUID for d in instances}
    first = Server(models_dir, tmp_path / "first.log", **settings)
    try:
        for start in range(0, INSTANCES, 10):
            content_type, body = encode_related(instances[start : start + 10])
            r = httpx.post(
                first.url + "/dicomweb/studies",
                content=body,
                headers={"content-type": content_type},
                timeout=60,
            )
            assert r.status_code == 200, r.text
        # Kill it mid-way: some jobs done (and results on their way), most still to do.
        deadline = time.monotonic() + 120
        while done_jobs(first) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(first, "sharpcxr_jobs_pending") > 0, "all done before the kill"
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(timeout=10)
    finally:
        first.stop()
    received_before_restart = len(receiver.received)
    assert received_before_restart < 3 * INSTANCES

    second = Server(models_dir, tmp_path / "second.log", **settings)
    try:
        receiver.wait_for(3 * INSTANCES, timeout_s=300)
        time.sleep(2.0)  # anything sent twice would arrive now
        jobs = []
        for study in study_uids:
            r = httpx.get(f"{second.url}/v1/studies/{study}/results", timeout=10)
            assert r.status_code == 200
            jobs += r.json()["instances"]
        assert len(jobs) == INSTANCES
        assert all(j["state"] == "done" for j in jobs)
        assert all(d["state"] == "delivered" for j in jobs for d in j["deliveries"])
        made = {o["sop_instance_uid"] for j in jobs for o in j["objects"]}
        assert len(made) == 3 * INSTANCES
        counts = collections.Counter(receiver.received)
        assert set(counts) == made
        assert [uid for uid, n in counts.items() if n > 1] == []  # none twice
        [recovered] = [line for line in second.log().splitlines() if '"recovered"' in line]
        assert '"jobs": 0' not in recovered  # the kill did leave jobs half done
        print(f"received before the kill: {received_before_restart}; after restart: {recovered}")
    finally:
        second.stop()
        receiver.stop()


@pytest.mark.parametrize("copies", [2])
def test_the_same_instance_sent_twice_gives_one_result(
    models_dir: Path, tmp_path: Path, copies: int
) -> None:
    receiver = ResultReceiver().start()
    server = Server(
        models_dir,
        tmp_path / "service.log",
        default_resolution="256",
        data_dir=str(tmp_path / "data"),
        results_ae=f"RECEIVER@127.0.0.1:{receiver.port}",
    )
    try:
        data = phantom_dicom(phantom(60, size=320))
        for _ in range(copies):
            content_type, body = encode_related([data])
            r = httpx.post(
                server.url + "/dicomweb/studies",
                content=body,
                headers={"content-type": content_type},
                timeout=60,
            )
            assert r.status_code == 200
        receiver.wait_for(3, timeout_s=120)
        time.sleep(2.0)
        assert len(receiver.received) == 3 and len(set(receiver.received)) == 3
    finally:
        server.stop()
        receiver.stop()
