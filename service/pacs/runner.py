"""The job worker and the deliverer: asyncio tasks over the durable store.

Worker: claim a queued job -> the service's own pipeline (decode -> gate -> batcher ->
explain, exactly what ``/v1/predict`` runs, with the default resolution and Grad-CAM) ->
SEG, SR and GSPS (:mod:`service.pacs.results`, in the CPU pool) -> one transaction that
stores them, queues their deliveries and marks the job done. An image the service cannot
assess ends ``refused`` with the refusal's code and message; an overload or deadline puts
the job back in the queue for later; an unexpected error is retried up to
:data:`~service.pacs.store.MAX_JOB_ATTEMPTS` times (a job that crashed the process counts
too), then ``failed``.

Deliverer: due outbox rows, grouped by destination, sent by the senders of
:mod:`service.pacs.delivery` in a thread; a row is delivered when the receiver confirmed
it, else retried with exponential back-off until ``delivery_max_attempts``.

Logs carry job ids and codes, never UIDs or header values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor

from imaging.errors import ImagingError
from service.errors import (
    DeadlineExceededError,
    NotReadyError,
    OverloadedError,
    ServiceError,
    error_status_and_code,
)
from service.logs import request_id_var
from service.metrics import Metrics
from service.pacs.delivery import Held, Sender
from service.pacs.results import result_rows
from service.pacs.store import (
    MAX_JOB_ATTEMPTS,
    ClaimedJob,
    Delivery,
    JobStore,
    NewJob,
)
from service.pacs.stow import Instance
from service.pipeline import Pipeline, PredictOptions, RequestContext

log = logging.getLogger(__name__)

#: waits before a job refused for a transient reason (overload, deadline) is tried again
TRANSIENT_RETRY_S = 2.0
#: the longest a loop sleeps without being woken (a safety net for lost wake-ups)
IDLE_POLL_S = 1.0
#: how often an idle worker purges received instances past their retention
PURGE_INTERVAL_S = 60.0
TRANSIENT = (OverloadedError, DeadlineExceededError, NotReadyError)


class JobRunner:
    """``job_workers`` worker tasks and one deliverer task; :meth:`wake` is thread-safe."""

    def __init__(
        self,
        store: JobStore,
        pipeline: Pipeline,
        pool: Executor,
        metrics: Metrics,
        senders: Sequence[Sender],
        *,
        workers: int,
        request_timeout_s: float,
        delivery_backoff_s: float,
        delivery_max_attempts: int,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.pool = pool
        self.metrics = metrics
        self.senders = {s.destination: s for s in senders}
        self.workers = workers
        self.request_timeout_s = request_timeout_s
        self.delivery_backoff_s = delivery_backoff_s
        self.delivery_max_attempts = delivery_max_attempts
        self._tasks: list[asyncio.Task[None]] = []
        self._jobs_ready = asyncio.Event()
        self._deliveries_ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._purged_at = 0.0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        jobs, sends = await asyncio.to_thread(self.store.recover)
        if jobs or sends:
            log.warning("work a previous process left unfinished is queued again",
                        extra={"code": "recovered", "jobs": jobs, "deliveries": sends})  # fmt: skip
        await self.refresh_gauges()
        self._tasks = [asyncio.create_task(self._work(), name=f"sharpcxr-job-{i}")
                       for i in range(self.workers)]  # fmt: skip
        self._tasks.append(asyncio.create_task(self._deliver(), name="sharpcxr-deliver"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def receive(self, instance: Instance, source: str) -> tuple[str, bool]:
        """Store a received instance durably and wake a worker (call from a thread: it
        blocks on the database). ``(job id, created)``; a second copy of an instance
        keeps the first job."""
        job_id, created = self.store.add(
            NewJob(
                sop_instance_uid=instance.sop_instance_uid,
                sop_class_uid=instance.sop_class_uid,
                study_instance_uid=instance.study_instance_uid,
                series_instance_uid=instance.series_instance_uid,
                source=source,
                data=instance.data,
            )
        )
        self.metrics.jobs.labels(source, "received" if created else "duplicate").inc()
        if created:
            self.metrics.jobs_pending.inc()
            self.wake()
        return job_id, created

    def wake(self) -> None:
        """A job was stored (from any thread): let an idle worker look."""
        if self._loop is not None:
            # the loop may close between the check and the call while the service stops;
            # the job is stored either way and found at the next start
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._jobs_ready.set)

    async def refresh_gauges(self) -> None:
        states, pending = await asyncio.to_thread(self.store.counts)
        self.metrics.jobs_pending.set(states.get("queued", 0) + states.get("processing", 0))
        self.metrics.outbox_depth.set(pending)

    # ------------------------------------------------------------------ worker
    async def _work(self) -> None:
        while True:
            try:
                job = await asyncio.to_thread(self.store.claim)
            except Exception:
                log.exception("the job store could not be read", extra={"code": "store_error"})
                job = None
            # every pass, busy or idle: under steady traffic there is never an idle one
            await self._purge_if_due()
            if job is None:
                await _wait(self._jobs_ready, IDLE_POLL_S)
                continue
            request_id_var.set(f"job-{job.id}")
            try:
                await self._process(job)
            except Exception:  # the store itself failed: give the job back if it can
                log.exception("job bookkeeping failed", extra={"code": "store_error"})
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(
                        self.store.retry_later, job.id, TRANSIENT_RETRY_S, "store_error",
                        "the job store failed; retrying",
                    )  # fmt: skip
            with contextlib.suppress(Exception):
                await self.refresh_gauges()

    async def _purge_if_due(self) -> None:
        """Received instances past their retention go (at most every PURGE_INTERVAL_S)."""
        now = time.monotonic()
        if now - self._purged_at < PURGE_INTERVAL_S:
            return
        self._purged_at = now
        try:
            purged = await asyncio.to_thread(self.store.purge_received)
        except Exception:
            log.exception("the job store could not be purged", extra={"code": "store_error"})
            return
        if purged:
            log.info("received instances past retention deleted",
                     extra={"code": "purged", "instances": purged})  # fmt: skip

    async def _process(self, job: ClaimedJob) -> None:
        if job.attempts > MAX_JOB_ATTEMPTS:
            message = f"processing this instance stopped {MAX_JOB_ATTEMPTS} times unfinished"
            await asyncio.to_thread(self.store.refuse, job.id, "job_failed", message, failed=True)
            self._count(job, "failed")
            return
        ctx = RequestContext(
            request_id=f"job-{job.id}",
            options=PredictOptions(mask_format="rle"),
            deadline=time.monotonic() + self.request_timeout_s,
            started=time.perf_counter(),
        )
        try:
            models = self.pipeline.models([None], ctx.options.method)
            [response] = await self.pipeline.run(ctx, job.data, models)
            loop = asyncio.get_running_loop()
            rows = await loop.run_in_executor(self.pool, result_rows, job.data, response)
        except TRANSIENT as exc:
            await self._retry(job, exc)
            return
        except (ImagingError, ServiceError) as exc:
            _, code, message = error_status_and_code(exc)
            await asyncio.to_thread(self.store.refuse, job.id, code, message)
            log.info("job refused", extra={"code": code})
            self._count(job, "refused")
            return
        except Exception:
            log.exception("job failed", extra={"code": "job_error"})
            if job.attempts >= MAX_JOB_ATTEMPTS:
                message = "an internal error stopped processing; see the service log"
                await asyncio.to_thread(
                    self.store.refuse, job.id, "job_failed", message, failed=True
                )
                self._count(job, "failed")
            else:
                await asyncio.to_thread(
                    self.store.retry_later, job.id, TRANSIENT_RETRY_S, "job_error", "retrying"
                )
                self._count(job, "retried")
            return
        await asyncio.to_thread(
            self.store.finish, job.id, response_json=response.model_dump_json(),
            objects=rows, destinations=list(self.senders),
        )  # fmt: skip
        self._count(job, "done")
        log.info("job done", extra={"code": "done", "probability": round(response.probability, 4),
                                    "resolution": response.model.resolution})  # fmt: skip
        if self.senders:
            self._deliveries_ready.set()

    async def _retry(self, job: ClaimedJob, exc: Exception) -> None:
        _, code, message = error_status_and_code(exc)
        await asyncio.to_thread(
            self.store.retry_later, job.id, TRANSIENT_RETRY_S, code, message, transient=True
        )
        self._count(job, "retried")

    def _count(self, job: ClaimedJob, state: str) -> None:
        self.metrics.jobs.labels(job.source, state).inc()

    # ------------------------------------------------------------------ deliverer
    async def _deliver(self) -> None:
        while True:
            try:
                due = (
                    await asyncio.to_thread(self.store.due_deliveries, list(self.senders))
                    if self.senders
                    else []
                )
            except Exception:
                log.exception("the outbox could not be read", extra={"code": "store_error"})
                due = []
            if not due:
                try:
                    idle_s = await self._idle_s()
                except Exception:
                    log.exception("the outbox could not be read", extra={"code": "store_error"})
                    idle_s = IDLE_POLL_S
                await _wait(self._deliveries_ready, idle_s)
                continue
            for destination, sender in self.senders.items():
                batch = [d for d in due if d.destination == destination]
                try:
                    if batch:
                        await self._send(sender, batch)
                except Exception:  # the store failed mid-batch: its rows wait for a restart
                    log.exception("delivery bookkeeping failed", extra={"code": "store_error"})
                    await asyncio.sleep(IDLE_POLL_S)
            with contextlib.suppress(Exception):
                await self.refresh_gauges()

    async def _idle_s(self) -> float:
        if not self.senders:
            return 3600.0
        next_at = await asyncio.to_thread(self.store.next_delivery_at)
        if next_at is None:
            return IDLE_POLL_S
        return max(0.05, min(IDLE_POLL_S, next_at - time.time()))

    async def _send(self, sender: Sender, deliveries: Sequence[Delivery]) -> None:
        by_uid = {d.result_uid: d for d in deliveries}
        reported: set[str] = set()

        def report(uid: str, error: str | None) -> None:  # in the sender's thread
            delivery = by_uid.get(uid)
            if delivery is None or uid in reported:
                return
            reported.add(uid)
            if error is None:
                self.store.delivered(delivery.id)
                self.metrics.deliveries.labels(sender.destination, "delivered").inc()
                return
            final = self.store.delivery_failed(
                delivery.id, error,
                first_backoff_s=self.delivery_backoff_s, max_attempts=self.delivery_max_attempts,
            )  # fmt: skip
            self.metrics.deliveries.labels(sender.destination, "failed" if final else "retry").inc()
            extra = {"code": "delivery_retry", "endpoint": sender.destination}
            log.warning("delivery not confirmed", extra=extra)

        doubtful = [Held(d.result_uid, d.series_instance_uid, d.study_instance_uid)
                    for d in deliveries if d.in_doubt]  # fmt: skip
        unreported = "no outcome reported"
        try:
            if doubtful:  # an earlier try may have reached the receiver: ask it first
                held = await asyncio.to_thread(sender.held, doubtful)
                for uid in held or ():
                    await asyncio.to_thread(report, uid, None)
            objects = [(d.result_uid, d.data) for d in deliveries if d.result_uid not in reported]
            await asyncio.to_thread(sender.send, objects, report)
        except Exception as exc:  # a sender bug or an unreadable object: retry, say why
            log.exception("delivery raised", extra={"code": "delivery_error"})
            unreported = type(exc).__name__
        for uid in by_uid.keys() - reported:
            await asyncio.to_thread(report, uid, unreported)


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)
    event.clear()
