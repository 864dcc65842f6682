"""What a running service holds: registry, batchers, pools, the pipeline, readiness.

:meth:`ServiceRuntime.start` loads and warms the models (refusing to start on a bad
model file) and starts one batcher per resolution; only then is the runtime ready.
:meth:`ServiceRuntime.stop` drains in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial

from cxrmodel.vocab import Device
from imaging.dicom import read_dicom
from imaging.reduced import configure_decoder_threads
from service.batching import Batcher
from service.decode_pool import DecodePool
from service.metrics import Metrics
from service.pacs.delivery import CStoreSender, Sender, StowSender
from service.pacs.runner import JobRunner
from service.pacs.scp import StorageSCP
from service.pacs.store import JobStore
from service.pipeline import Pipeline
from service.registry import Registry, load_registry
from service.settings import Settings

log = logging.getLogger(__name__)


class ServiceRuntime:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry: Registry | None = None
        self.pipeline: Pipeline | None = None
        self.batchers: dict[int, Batcher] = {}
        self.pool: ThreadPoolExecutor | None = None
        self.decode_pool: DecodePool | None = None
        self.inference_pools: list[ThreadPoolExecutor] = []
        self.store: JobStore | None = None
        self.runner: JobRunner | None = None
        self.scp: StorageSCP | None = None
        self.ready = False
        self.detail = "models are still loading"
        #: after SIGTERM (service.draining): new requests 503, accepted ones finish
        self.draining = False
        #: requests accepted and not yet answered (event-loop only; service.draining)
        self.in_flight = 0

    async def start(self) -> None:
        s = self.settings
        # OpenJPEG threads per decode: the cores left over by the decode pool's threads (1
        # where the pool already fills them; more on a large machine with few workers)
        decoder_threads = max(1, len(os.sched_getaffinity(0)) // s.decode_workers)
        configure_decoder_threads(decoder_threads)
        if s.decode_isolation == "process":
            self.decode_pool = DecodePool(
                s.decode_workers,
                timeout_s=s.decode_timeout_s,
                memory_mb=s.decode_memory_mb,
                plugins=s.decoder_plugins,
                decoder_threads=decoder_threads,
                on_failure=lambda reason: self.metrics.decoder_failures.labels(reason).inc(),
            )
            await asyncio.to_thread(self.decode_pool.start)
        # Loading and warming is CPU work, in a thread: the loop stays free to act on
        # signals meanwhile (the server listens only after this lifespan step).
        registry = await asyncio.to_thread(load_registry, s)
        self.registry = registry
        self.pool = ThreadPoolExecutor(s.decode_workers, thread_name_prefix="sharpcxr-cpu")
        shared: Executor | None = None
        if s.device is Device.CPU:
            # One inference at a time across resolutions: each already uses
            # intra_op_threads cores, and overlapping them only oversubscribes the CPU.
            shared = self._inference_pool("sharpcxr-infer")
        for model in registry:
            executor = shared or self._inference_pool(f"sharpcxr-infer-{model.resolution}")
            batcher = Batcher(
                model.backend,
                executor,
                self.metrics,
                max_batch_size=s.max_batch_size,
                batch_timeout_s=s.batch_timeout_ms / 1000,
                max_queue=s.max_queue,
            )
            batcher.start()
            self.batchers[model.resolution] = batcher
            self.metrics.queue_depth.labels(str(model.resolution)).set(0)
            self.metrics.queue_capacity.labels(str(model.resolution)).set(s.max_queue)
            self.metrics.model_info.labels(
                str(model.resolution), model.entry.name, model.entry.version, model.backend.name
            ).set(1)
        self.pipeline = Pipeline(
            registry,
            self.batchers,
            self.pool,
            self.metrics,
            gate=s.gate,
            max_pixels=s.max_pixels,
            reduced_decode=s.reduced_decode,
            heatmap_max_side=s.heatmap_max_side,
            max_decode_backlog=s.max_queue + s.decode_workers,
            decoder=self.decode_pool.decode if self.decode_pool else read_dicom,
        )
        await self._start_pacs()
        self.ready = True
        self.detail = "ready"
        self.metrics.ready.set(1)
        log.info(
            "service ready",
            extra={
                "resolutions": registry.resolutions,
                "backend": s.backend.value,
                "models": [m.entry.name for m in registry],
            },
        )

    async def _start_pacs(self) -> None:
        """The job store, its worker and deliverer, and the C-STORE SCP when configured."""
        s = self.settings
        assert self.pipeline is not None and self.pool is not None
        self.store = await asyncio.to_thread(
            partial(
                JobStore, s.jobs_database_url(), retain_received_s=s.retain_received_hours * 3600
            )
        )
        senders: list[Sender] = []
        if s.results_stow_url:
            senders.append(StowSender(s.results_stow_url))
        if s.results_ae:
            senders.append(CStoreSender(s.results_ae, calling_aet=s.dicom_ae_title))
        self.runner = JobRunner(
            self.store,
            self.pipeline,
            self.pool,
            self.metrics,
            senders,
            workers=s.job_workers,
            request_timeout_s=s.request_timeout_s,
            delivery_backoff_s=s.delivery_backoff_s,
            delivery_max_attempts=s.delivery_max_attempts,
        )
        await self.runner.start()
        if s.dicom_port is not None:
            self.scp = StorageSCP(
                self.runner.receive,
                host=s.dicom_host,
                port=s.dicom_port,
                ae_title=s.dicom_ae_title,
                allowed_aes=s.dicom_allowed_aes,
                max_instance_bytes=int(s.max_upload_mb * 1024 * 1024),
                acse_timeout_s=s.dicom_acse_timeout_s,
                max_associations=s.dicom_max_associations,
            )
            await asyncio.to_thread(self.scp.start)

    async def begin_drain(self) -> None:
        """Stop admitting: /readyz and ``sharpcxr_ready`` say so, the C-STORE listener
        closes (open associations finish); accepted work goes on."""
        self.draining = True
        self.detail = "shutting down: finishing accepted requests"
        self.metrics.ready.set(0)
        self.metrics.draining.set(1)
        if self.scp is not None:
            await asyncio.to_thread(self.scp.stop)

    def work_in_flight(self) -> int:
        """HTTP requests accepted and unanswered, plus C-STORE associations open."""
        return self.in_flight + (self.scp.active() if self.scp is not None else 0)

    def _inference_pool(self, name: str) -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self.inference_pools.append(pool)
        return pool

    async def stop(self) -> None:
        self.ready = False
        self.detail = "shutting down"
        self.metrics.ready.set(0)
        # Intake first (nothing new accepted), then the workers (an unfinished job stays
        # in the store and is done after the restart), then what they used.
        if self.scp is not None:
            await asyncio.to_thread(self.scp.stop)
        if self.runner is not None:
            await self.runner.stop()
        for batcher in self.batchers.values():
            await batcher.stop()
        self.batchers.clear()
        for pool in self.inference_pools:
            pool.shutdown(wait=True, cancel_futures=True)
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.decode_pool is not None:
            self.decode_pool.close()
        if self.registry is not None:
            self.registry.close()
        if self.store is not None:
            self.store.close()
