"""The job store and outbox on a real SQLite file, and crash recovery through the app."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from service.pacs.related import encode_related
from service.pacs.store import JOB_LEASE_S, JobStore, NewJob, ResultRow, backoff_s, jobs, outbox
from tests.service.conftest import make_client, phantom, phantom_dicom
from tests.service.pacs.peers import ResultReceiver
from tests.service.pacs.test_pacs_api import header, wait_finished


def new_job(uid: str) -> NewJob:
    return NewJob(
        uid, "1.2.840.10008.5.1.4.1.1.1", "1.2.3", "1.2.3.4", "stow", b"bytes-" + uid.encode()
    )


def row(uid: str, kind: str = "sr") -> ResultRow:
    return ResultRow(uid, kind, "1.2.840.10008.5.1.4.1.1.88.33", "1.2.3.9", b"result")


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")


def test_one_job_per_sop_instance_uid(store: JobStore) -> None:
    job_id, created = store.add(new_job("1.1"))
    again, created_again = store.add(new_job("1.1"))
    assert created and not created_again and again == job_id
    assert store.counts() == ({"queued": 1}, 0)


def test_sqlite_is_in_wal_mode_and_synchronous_full(store: JobStore) -> None:
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_claim_recover_finish(store: JobStore, tmp_path: Path) -> None:
    first, _ = store.add(new_job("1.1"))
    claimed = store.claim()
    assert claimed is not None and claimed.id == first and claimed.data == b"bytes-1.1"
    assert store.claim() is None  # the only job is taken
    # The process dies here; a new one opens the same file and recovers.
    reopened = JobStore(store.url)
    assert reopened.recover() == (1, 0)
    again = reopened.claim()
    assert again is not None and again.id == first and again.attempts == 2
    objects = [row("9.1", "seg"), row("9.2", "sr")]
    reopened.finish(first, response_json="{}", objects=objects, destinations=["dimse"])
    reopened.finish(first, response_json="{}", objects=objects, destinations=["dimse"])  # rerun
    job = reopened.job(first)
    assert job is not None and job["state"] == "done"
    assert [o["sop_instance_uid"] for o in job["objects"]] == ["9.1", "9.2"]
    assert len(job["deliveries"]) == 2  # not doubled by the rerun
    assert reopened.result_object("9.1") == b"result"
    with reopened.engine.connect() as conn:  # the received bytes are dropped once done
        assert conn.exec_driver_sql("SELECT count(*) FROM job_data").scalar() == 0


def test_deliveries_are_marked_sending_and_doubted_after_a_crash(store: JobStore) -> None:
    job_id, _ = store.add(new_job("1.1"))
    store.claim()
    store.finish(job_id, response_json="{}", objects=[row("9.1")], destinations=["dimse"])
    [due] = store.due_deliveries(["dimse"])
    assert not due.in_doubt and due.study_instance_uid == "1.2.3"
    assert store.due_deliveries(["dimse"]) == []  # sending: not handed out twice
    assert store.recover() == (0, 1)
    [doubted] = store.due_deliveries(["dimse"])
    assert doubted.in_doubt
    assert not store.delivery_failed(doubted.id, "refused", first_backoff_s=10, max_attempts=2)
    assert store.due_deliveries(["dimse"]) == []  # backing off
    assert store.next_delivery_at() == pytest.approx(time.time() + 10, abs=2)
    with store.engine.begin() as conn:
        conn.execute(sa.update(outbox).values(next_attempt_at=0.0))
    [last] = store.due_deliveries(["dimse"])
    assert last.in_doubt  # unconfirmed: the receiver may hold it, so it is asked next time
    assert store.delivery_failed(last.id, "refused again", first_backoff_s=10, max_attempts=2)
    assert store.job(job_id)["deliveries"][0]["state"] == "failed"  # type: ignore[index]


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_s(n, 2.0) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert backoff_s(30, 2.0) == 600.0


def _interrupt_deliveries(data_dir: Path) -> int:
    """What a crash in the middle of sending leaves: every delivery ``sending``."""
    store = JobStore(f"sqlite:///{(data_dir / 'jobs.sqlite').resolve()}")
    with store.engine.begin() as conn:
        n = conn.execute(sa.update(outbox).values(state="sending")).rowcount
    store.close()
    return int(n)


@pytest.mark.parametrize("receiver_kept_them", [True, False])
def test_sends_in_doubt_are_checked_with_the_receiver(
    models_dir: Path, tmp_path: Path, receiver_kept_them: bool
) -> None:
    """After a crash during a send, the receiver is asked (C-FIND) before anything is sent
    again: what it holds is marked delivered, the rest is sent."""
    receiver = ResultReceiver().start()
    settings = dict(default_resolution=256, data_dir=tmp_path, delivery_backoff_s=0.2,
                    results_ae=f"RECEIVER@127.0.0.1:{receiver.port}")  # fmt: skip
    data = phantom_dicom(phantom(9, size=256))
    try:
        with make_client(models_dir, **settings) as c:
            content_type, body = encode_related([data])
            c.post("/dicomweb/studies", content=body, headers={"content-type": content_type})
            wait_finished(c, header(data).StudyInstanceUID, 1)
            receiver.wait_for(3)
        assert _interrupt_deliveries(tmp_path) == 3
        if not receiver_kept_them:
            receiver.received.clear()
        with make_client(models_dir, **settings) as c:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                [job] = c.get(f"/v1/studies/{header(data).StudyInstanceUID}/results").json()[
                    "instances"
                ]
                if all(d["state"] == "delivered" for d in job["deliveries"]):
                    break
                time.sleep(0.1)
            assert [d["state"] for d in job["deliveries"]] == ["delivered"] * 3
            time.sleep(0.5)
        assert len(receiver.received) == 3  # either way exactly one copy each
    finally:
        receiver.stop()


def test_leases_bring_back_work_a_live_process_lost(store: JobStore) -> None:
    """A job or a send whose bookkeeping died is picked up again after its lease, without
    a restart; a delivery whose lease expired comes back in doubt."""
    job_id, _ = store.add(new_job("1.1"))
    assert store.claim() is not None
    with store.engine.begin() as conn:  # the claim is older than its lease
        conn.execute(sa.update(jobs).values(updated_at=time.time() - JOB_LEASE_S - 1))
    again = store.claim()
    assert again is not None and again.id == job_id and again.attempts == 2
    store.finish(job_id, response_json="{}", objects=[row("9.1")], destinations=["dimse"])
    assert store.due_deliveries(["stow"]) == []  # only configured destinations
    [sent] = store.due_deliveries(["dimse"])
    assert not sent.in_doubt and store.due_deliveries(["dimse"]) == []
    with store.engine.begin() as conn:
        conn.execute(sa.update(outbox).values(next_attempt_at=0.0))  # the lease ran out
    [reclaimed] = store.due_deliveries(["dimse"])
    assert reclaimed.id == sent.id and reclaimed.in_doubt


def test_a_transient_retry_does_not_use_up_attempts(store: JobStore) -> None:
    job_id, _ = store.add(new_job("1.1"))
    for _ in range(5):  # five overloads in a row
        claimed = store.claim()
        assert claimed is not None and claimed.attempts == 1
        store.retry_later(job_id, 0.0, "overloaded", "busy", transient=True)
