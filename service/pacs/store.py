"""The durable job store and outbox (SQLAlchemy Core; SQLite in WAL mode by default).

Four tables. ``jobs``: one row per received SOP Instance UID (UNIQUE); ``job_data``: its
received bytes, written in the same transaction, so a sender is acknowledged only once its
instance is on disk; kept ``retain_received_s`` after the job is finished (for the viewer
to show the image), then purged by :meth:`purge_received`. ``results``: the DICOM objects made for a
job (SEG, SR, GSPS). ``outbox``: one row per (result object, destination), delivered with
retries until the receiver confirms.

Job states: ``queued`` -> ``processing`` -> ``done`` | ``refused`` (the image cannot be
assessed: the gate or the decoder said why) | ``failed`` (an internal error, after
``MAX_JOB_ATTEMPTS``). A process killed mid-way leaves ``processing`` rows; :meth:`recover`
puts them back in the queue at start, and the results they make are the same objects (the
UIDs are deterministic), so the store and the receivers see each instance once.

Every method is synchronous and short; the service calls them through ``asyncio.to_thread``
and the C-STORE SCP from its association threads. Times are ``time.time()`` seconds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

#: attempts at processing one job before it is marked failed (crashes included)
MAX_JOB_ATTEMPTS = 3
#: longest delay between two delivery attempts
MAX_BACKOFF_S = 600.0
#: a claim older than this is taken to have died (its process, or its bookkeeping): the
#: job is claimed again, the delivery handed out again in doubt
JOB_LEASE_S = 900.0
DELIVERY_LEASE_S = 300.0

#: job states after which nothing more is done with the received instance
FINISHED_STATES = ("done", "refused", "failed")
#: received instances deleted per transaction by :meth:`JobStore.purge_received`
PURGE_BATCH = 100

metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
    sa.Column("sop_class_uid", sa.String(64), nullable=False),
    sa.Column("study_instance_uid", sa.String(64), nullable=False, index=True),
    sa.Column("series_instance_uid", sa.String(64), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),  # stow | dimse
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("not_before", sa.Float, nullable=False, default=0.0),
    sa.Column("created_at", sa.Float, nullable=False, index=True),  # the worklist's order
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("response_json", sa.Text, nullable=True),
)

# The received bytes apart from the job's row: SQLite rewrites a whole row on every UPDATE,
# so a state change of a row holding an 8 MiB instance would write 8 MiB each time.
job_data = sa.Table(
    "job_data",
    metadata,
    sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),  # purged after the retention period
)

results = sa.Table(
    "results",
    metadata,
    sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
    sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False, index=True),
    sa.Column("kind", sa.String(8), nullable=False),  # seg | sr | gsps
    sa.Column("sop_class_uid", sa.String(64), nullable=False),
    sa.Column("series_instance_uid", sa.String(64), nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("result_uid", sa.String(64), sa.ForeignKey("results.sop_instance_uid"),
              nullable=False),
    sa.Column("destination", sa.String(16), nullable=False),  # stow | dimse
    # pending | sending (committed before the send) | delivered | failed
    sa.Column("state", sa.String(16), nullable=False, index=True),
    # a send was under way when the process died: the receiver may hold it already
    sa.Column("in_doubt", sa.Boolean, nullable=False, default=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Float, nullable=False, default=0.0),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("delivered_at", sa.Float, nullable=True),
    sa.UniqueConstraint("result_uid", "destination"),
)  # fmt: skip


@dataclass(frozen=True)
class NewJob:
    """A received instance, as the receivers hand it to the store."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    source: str
    data: bytes


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    source: str
    attempts: int
    data: bytes


@dataclass(frozen=True)
class ResultRow:
    sop_instance_uid: str
    kind: str
    sop_class_uid: str
    series_instance_uid: str
    data: bytes


@dataclass(frozen=True)
class Delivery:
    """One object for one destination; ``in_doubt``: ask the receiver before resending."""

    id: int
    result_uid: str
    destination: str
    attempts: int
    data: bytes
    study_instance_uid: str
    series_instance_uid: str
    in_doubt: bool


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer; FULL: a committed job survives power loss too,
    # since committing is what acknowledges the sender.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    # deleted received instances (patient data) are overwritten, not left in free pages
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def backoff_s(attempts: int, first_s: float) -> float:
    """Delay before the next try after ``attempts`` failed ones: ``first_s * 2**(n-1)``."""
    return float(min(MAX_BACKOFF_S, first_s * 2 ** max(0, attempts - 1)))


class JobStore:
    """Jobs, results and the outbox in one database (``url``: any SQLAlchemy URL).

    ``retain_received_s``: how long a finished job keeps its received instance (0: it is
    deleted in the transaction that finishes the job).
    """

    def __init__(self, url: str, *, retain_received_s: float = 0.0) -> None:
        self.url = url
        self.retain_received_s = retain_received_s
        parsed = sa.engine.make_url(url)
        # hide_parameters: error messages (which reach the log) never carry a UID
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = sa.create_engine(
                url, connect_args={"timeout": 30}, hide_parameters=True
            )
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True, hide_parameters=True)
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ receiving
    def add(self, job: NewJob) -> tuple[str, bool]:
        """Store a received instance durably: ``(job id, created)``; ``created`` is False
        when the SOP Instance UID was already received (the earlier job stands)."""
        now = time.time()
        job_id = uuid.uuid4().hex
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(jobs).values(
                    id=job_id, sop_instance_uid=job.sop_instance_uid,
                    sop_class_uid=job.sop_class_uid, study_instance_uid=job.study_instance_uid,
                    series_instance_uid=job.series_instance_uid, source=job.source,
                    state="queued", attempts=0, not_before=0.0, created_at=now,
                    updated_at=now,
                ))  # fmt: skip
                conn.execute(sa.insert(job_data).values(job_id=job_id, data=job.data))
            return job_id, True
        except IntegrityError:
            with self.engine.connect() as conn:
                existing = conn.execute(
                    sa.select(jobs.c.id).where(jobs.c.sop_instance_uid == job.sop_instance_uid)
                ).scalar_one()
            return str(existing), False

    # ------------------------------------------------------------------ processing
    def recover(self) -> tuple[int, int]:
        """After a crash: jobs left ``processing`` back in the queue, and deliveries left
        ``sending`` pending again but in doubt (the receiver may have stored them before
        the process died). ``(jobs, deliveries)`` recovered."""
        with self.engine.begin() as conn:
            recovered_jobs = conn.execute(
                sa.update(jobs).where(jobs.c.state == "processing")
                .values(state="queued", updated_at=time.time())
            ).rowcount  # fmt: skip
            recovered_sends = conn.execute(
                sa.update(outbox).where(outbox.c.state == "sending")
                .values(state="pending", in_doubt=True, next_attempt_at=0.0)
            ).rowcount  # fmt: skip
        return int(recovered_jobs), int(recovered_sends)

    def claim(self) -> ClaimedJob | None:
        """The oldest queued job that is due (or one ``processing`` past its lease), marked
        ``processing`` (safe with several claimers: state and time are compared in the
        UPDATE)."""
        now = time.time()
        with self.engine.begin() as conn:
            while True:
                claimable = sa.or_(
                    sa.and_(jobs.c.state == "queued", jobs.c.not_before <= now),
                    sa.and_(jobs.c.state == "processing", jobs.c.updated_at < now - JOB_LEASE_S),
                )
                row = conn.execute(
                    sa.select(jobs.c.id, jobs.c.state, jobs.c.updated_at).where(claimable)
                    .order_by(jobs.c.created_at).limit(1)
                ).first()  # fmt: skip
                if row is None:
                    return None
                claimed = conn.execute(
                    sa.update(jobs).where(jobs.c.id == row.id, jobs.c.state == row.state,
                                          jobs.c.updated_at == row.updated_at)
                    .values(state="processing", attempts=jobs.c.attempts + 1, updated_at=now)
                )  # fmt: skip
                if claimed.rowcount == 1:
                    full = conn.execute(
                        sa.select(jobs.c.id, jobs.c.source, jobs.c.attempts, job_data.c.data)
                        .join(job_data, job_data.c.job_id == jobs.c.id, isouter=True)
                        .where(jobs.c.id == row.id)
                    ).one()  # fmt: skip
                    return ClaimedJob(full.id, full.source, full.attempts, full.data or b"")

    def finish(
        self,
        job_id: str,
        *,
        response_json: str | None,
        objects: Sequence[ResultRow],
        destinations: Iterable[str],
    ) -> None:
        """One transaction: the results, their outbox rows and the job ``done``. The
        results' UIDs are deterministic, so a rerun after a crash finds them there."""
        now = time.time()
        with self.engine.begin() as conn:
            for obj in objects:
                if self._exists(conn, results, results.c.sop_instance_uid, obj.sop_instance_uid):
                    continue
                conn.execute(sa.insert(results).values(job_id=job_id, **obj.__dict__))
            for obj in objects:
                for destination in destinations:
                    present = conn.execute(sa.select(outbox.c.id).where(
                        outbox.c.result_uid == obj.sop_instance_uid,
                        outbox.c.destination == destination,
                    )).first()  # fmt: skip
                    if present is None:
                        conn.execute(sa.insert(outbox).values(
                            result_uid=obj.sop_instance_uid, destination=destination,
                            state="pending", attempts=0, next_attempt_at=0.0, in_doubt=False,
                        ))  # fmt: skip
            self._close_job(
                conn, job_id, "done", now,
                response_json=response_json, error_code=None, error_message=None,
            )  # fmt: skip

    def refuse(self, job_id: str, code: str, message: str, *, failed: bool = False) -> None:
        """The job ends without results: ``refused`` (the image) or ``failed`` (us)."""
        with self.engine.begin() as conn:
            self._close_job(
                conn, job_id, "failed" if failed else "refused", time.time(),
                error_code=code, error_message=message,
            )  # fmt: skip

    def retry_later(
        self, job_id: str, delay_s: float, code: str, message: str, *, transient: bool = False
    ) -> None:
        """Back to the queue, due in ``delay_s``. ``transient`` (an overload, a deadline):
        the attempt does not count, since the job did not fail, the service was busy."""
        now = time.time()
        attempts = jobs.c.attempts - 1 if transient else jobs.c.attempts
        with self.engine.begin() as conn:
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(
                state="queued", not_before=now + delay_s, updated_at=now, attempts=attempts,
                error_code=code, error_message=message,
            ))  # fmt: skip

    @staticmethod
    def _exists(conn: Connection, table: sa.Table, column: Any, value: str) -> bool:
        return conn.execute(sa.select(column).where(column == value)).first() is not None

    def _close_job(
        self, conn: Connection, job_id: str, state: str, now: float, **values: Any
    ) -> None:
        conn.execute(
            sa.update(jobs).where(jobs.c.id == job_id)
            .values(state=state, updated_at=now, **values)
        )  # fmt: skip
        if self.retain_received_s <= 0:
            conn.execute(sa.delete(job_data).where(job_data.c.job_id == job_id))

    def purge_received(self, now: float | None = None) -> int:
        """Delete the received instances of jobs finished over ``retain_received_s`` ago;
        the number deleted."""
        cutoff = (time.time() if now is None else now) - self.retain_received_s
        due = (
            sa.select(job_data.c.job_id)
            .join(jobs, jobs.c.id == job_data.c.job_id)
            .where(jobs.c.state.in_(FINISHED_STATES), jobs.c.updated_at < cutoff)
            .limit(PURGE_BATCH)
        )
        total = 0
        # in short transactions: a long backlog never holds the write lock receivers need
        while True:
            with self.engine.begin() as conn:
                ids = list(conn.execute(due).scalars())
                if ids:
                    conn.execute(sa.delete(job_data).where(job_data.c.job_id.in_(ids)))
            total += len(ids)
            if len(ids) < PURGE_BATCH:
                return total

    # ------------------------------------------------------------------ delivery
    def due_deliveries(self, destinations: Sequence[str], limit: int = 16) -> list[Delivery]:
        """Deliveries to ``destinations`` that are due, marked ``sending`` with a lease
        (committed before any byte goes out, so a crash or a lost bookkeeping step leaves
        them in doubt, not forgotten: past the lease they are handed out again, in doubt)."""
        now = time.time()
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(outbox.c.id, outbox.c.result_uid, outbox.c.destination,
                          outbox.c.attempts, outbox.c.in_doubt, outbox.c.state, results.c.data,
                          results.c.series_instance_uid, jobs.c.study_instance_uid)
                .join(results, results.c.sop_instance_uid == outbox.c.result_uid)
                .join(jobs, jobs.c.id == results.c.job_id)
                .where(outbox.c.state.in_(("pending", "sending")),
                       outbox.c.next_attempt_at <= now,
                       outbox.c.destination.in_(list(destinations)))
                .order_by(outbox.c.next_attempt_at, outbox.c.id).limit(limit)
            ).all()  # fmt: skip
            for r in rows:
                conn.execute(
                    sa.update(outbox).where(outbox.c.id == r.id).values(
                        state="sending", next_attempt_at=now + DELIVERY_LEASE_S,
                        in_doubt=bool(r.in_doubt) or r.state == "sending",
                    )
                )  # fmt: skip
        return [
            Delivery(r.id, r.result_uid, r.destination, r.attempts, r.data,
                     r.study_instance_uid, r.series_instance_uid,
                     bool(r.in_doubt) or r.state == "sending")
            for r in rows
        ]  # fmt: skip

    def next_delivery_at(self) -> float | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(sa.func.min(outbox.c.next_attempt_at)).where(
                    outbox.c.state.in_(("pending", "sending"))
                )
            ).scalar()
        return None if value is None else float(value)

    def delivered(self, delivery_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(outbox).where(outbox.c.id == delivery_id).values(
                state="delivered", attempts=outbox.c.attempts + 1, delivered_at=time.time(),
                last_error=None, in_doubt=False,
            ))  # fmt: skip

    def delivery_failed(
        self, delivery_id: int, error: str, *, first_backoff_s: float, max_attempts: int
    ) -> bool:
        """Count an unconfirmed attempt; True when it was the last (the row is ``failed``)."""
        with self.engine.begin() as conn:
            attempts = (
                conn.execute(
                    sa.select(outbox.c.attempts).where(outbox.c.id == delivery_id)
                ).scalar_one()
                + 1
            )
            final = bool(int(attempts) >= max_attempts)
            conn.execute(sa.update(outbox).where(outbox.c.id == delivery_id).values(
                # in doubt: a timeout or a dropped connection may have come after the
                # receiver stored it, so the next try asks the receiver first
                attempts=attempts, last_error=error[:500], in_doubt=True,
                state="failed" if final else "pending",
                next_attempt_at=time.time() + backoff_s(attempts, first_backoff_s),
            ))  # fmt: skip
        return final

    # ------------------------------------------------------------------ reading
    def job(self, job_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return None if row is None else self._with_objects(dict(row._mapping))

    def recent_jobs(self, limit: int, state: str | None = None) -> list[dict[str, Any]]:
        """The ``limit`` most recently received jobs (in ``state`` when given), newest
        first, each with ``has_image`` (its received instance is still held)."""
        held = sa.exists().where(job_data.c.job_id == jobs.c.id).label("has_image")
        query = sa.select(jobs, held).order_by(jobs.c.created_at.desc(), jobs.c.id).limit(limit)
        if state is not None:
            query = query.where(jobs.c.state == state)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query).all()]

    def received(self, job_id: str) -> bytes | None:
        """The instance as received, while it is held (see ``retain_received_s``)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(job_data.c.data).where(job_data.c.job_id == job_id)
            ).scalar()
        return None if value is None else bytes(value)

    def jobs_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(jobs)
                .where(jobs.c.study_instance_uid == study_uid).order_by(jobs.c.created_at)
            ).all()  # fmt: skip
        return [self._with_objects(dict(r._mapping)) for r in rows]

    def _with_objects(self, job: dict[str, Any]) -> dict[str, Any]:
        with self.engine.connect() as conn:
            objects = conn.execute(
                sa.select(results.c.sop_instance_uid, results.c.kind, results.c.sop_class_uid,
                          results.c.series_instance_uid)
                .where(results.c.job_id == job["id"]).order_by(results.c.kind)
            ).all()  # fmt: skip
            deliveries = conn.execute(
                sa.select(outbox.c.result_uid, outbox.c.destination, outbox.c.state,
                          outbox.c.attempts, outbox.c.last_error)
                .join(results, results.c.sop_instance_uid == outbox.c.result_uid)
                .where(results.c.job_id == job["id"]).order_by(outbox.c.id)
            ).all()  # fmt: skip
        job["objects"] = [dict(o._mapping) for o in objects]
        job["deliveries"] = [dict(d._mapping) for d in deliveries]
        return job

    def result_object(self, sop_instance_uid: str) -> bytes | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(results.c.data).where(results.c.sop_instance_uid == sop_instance_uid)
            ).scalar()
        return None if value is None else bytes(value)

    def counts(self) -> tuple[dict[str, int], int]:
        """``({job state: count}, pending deliveries)`` for the gauges."""
        with self.engine.connect() as conn:
            by_state = conn.execute(
                sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)
            ).all()
            pending = conn.execute(
                sa.select(sa.func.count())
                .select_from(outbox)
                .where(outbox.c.state.in_(("pending", "sending")))
            ).scalar_one()
        return {str(s): int(n) for s, n in by_state}, int(pending)
