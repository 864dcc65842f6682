"""Dynamic batching per resolution: a bounded queue, a batch size cap, a batch timeout.

:func:`collect_batch` is the pure part (an ``asyncio.Queue`` in, a list out) and is tested
with a plain queue. The timeout is waited out only while more requests are on their way
(admitted for that resolution and still decoding): a request alone goes at once.
:class:`Batcher` owns one queue and one worker task per resolution:
it collects a batch, drops requests that were cancelled or are past their deadline, runs
the backend off the event loop and hands each request its own row of the outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from service.backends.base import Backend, FloatArray
from service.errors import DeadlineExceededError, NotReadyError, OverloadedError
from service.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


async def collect_batch(
    queue: asyncio.Queue[T],
    max_size: int,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
    coming: Callable[[], int] | None = None,
) -> list[T]:
    """Wait for one item, then take more until ``max_size`` items or ``timeout_s`` seconds
    after the first arrived, whichever comes first. Items already waiting are taken
    without waiting, so a backlog forms full batches at once.

    ``coming``: how many items are on their way (admitted upstream, not queued yet). When
    it says none, the batch goes at once: waiting for company that nobody is bringing
    only adds the window to a lone request's latency. ``None`` always waits the window."""
    batch = [await queue.get()]
    deadline = clock() + timeout_s
    while len(batch) < max_size:
        try:
            batch.append(queue.get_nowait())
            continue
        except asyncio.QueueEmpty:
            pass
        if coming is not None and coming() <= 0:
            break
        remaining = deadline - clock()
        if remaining <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(queue.get(), remaining))
        except TimeoutError:
            break
    return batch


@dataclass(frozen=True)
class Inference:
    """One image's model outputs: ``logit`` (pneumothorax, uncalibrated), raw ``cam``
    float32 ``(G, G)``, ``embedding`` float32 ``(C,)``, and how long it waited and ran
    (seconds)."""

    logit: float
    cam: FloatArray
    embedding: FloatArray
    queue_s: float
    inference_s: float


class Arrival:
    """One request on its way to a batcher's queue: counted in :attr:`Batcher.coming` from
    :meth:`Batcher.on_the_way` until it is queued (or gives up), exactly once."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher: Batcher | None = batcher
        batcher.coming += 1

    def arrive(self) -> None:
        if self._batcher is not None:
            self._batcher.coming -= 1
            self._batcher = None


@dataclass
class _Item:
    image: FloatArray  # (1, R, R)
    method: str
    deadline: float  # time.monotonic()
    future: asyncio.Future[Inference]
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    """The queue and worker of one resolution."""

    def __init__(
        self,
        backend: Backend,
        executor: Executor,
        metrics: Metrics,
        *,
        max_batch_size: int,
        batch_timeout_s: float,
        max_queue: int,
    ) -> None:
        self.backend = backend
        self.executor = executor
        self.metrics = metrics
        self.max_batch_size = min(max_batch_size, backend.max_batch or max_batch_size)
        self.batch_timeout_s = batch_timeout_s
        self.max_queue = max_queue
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue)
        self._label = str(backend.resolution)
        self._task: asyncio.Task[None] | None = None
        # requests admitted for this resolution and still decoding or preprocessing
        # (event-loop only): the collector waits its window only while some are coming
        self.coming = 0

    @contextlib.contextmanager
    def on_the_way(self) -> Iterator[Arrival]:
        """Count a request as coming from its admission until :meth:`infer` queues it
        (``infer(..., arrival=...)``) or it leaves early (an error, a refusal)."""
        arrival = Arrival(self)
        try:
            yield arrival
        finally:
            arrival.arrive()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"batcher-{self._label}"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(NotReadyError("the service is shutting down"))

    async def infer(
        self, image: FloatArray, method: str, deadline: float, arrival: Arrival | None = None
    ) -> Inference:
        """Queue one image ``(1, R, R)`` and wait for its result; 503 when the queue is full,
        :class:`DeadlineExceededError` when ``deadline`` (monotonic seconds) passes first.
        ``method`` was checked against the backend's methods by the caller; ``arrival``,
        from :meth:`on_the_way`, stops counting as coming once the image is queued."""
        future: asyncio.Future[Inference] = asyncio.get_running_loop().create_future()
        if arrival is not None:
            arrival.arrive()
        try:
            self.queue.put_nowait(_Item(image, method, deadline, future))
        except asyncio.QueueFull:
            raise OverloadedError(f"{self._label} px inference", self.max_queue) from None
        self.metrics.queue_depth.labels(self._label).set(self.queue.qsize())
        remaining = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(remaining, 0.0))
        except TimeoutError:
            future.cancel()  # the worker skips it if it has not started yet
            raise DeadlineExceededError(remaining) from None

    async def _run(self) -> None:
        while True:
            items = await collect_batch(
                self.queue,
                self.max_batch_size,
                self.batch_timeout_s,
                coming=lambda: self.coming,
            )
            self.metrics.queue_depth.labels(self._label).set(self.queue.qsize())
            now = time.monotonic()
            live = []
            for item in items:
                if item.future.done():  # cancelled: the client left or timed out
                    continue
                if now >= item.deadline:
                    item.future.set_exception(DeadlineExceededError(item.deadline - item.enqueued))
                    continue
                live.append(item)
            # A batch runs one saliency method (only the torch backend offers several).
            for method in dict.fromkeys(item.method for item in live):
                group = [item for item in live if item.method == method]
                await self._run_group(group, method)

    async def _run_group(self, group: list[_Item], method: str) -> None:
        started = time.monotonic()
        batch = np.stack([item.image for item in group])
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(self.executor, self.backend.infer, batch, method)
        except Exception as exc:  # a backend failure fails this batch, not the worker
            log.exception("inference failed", extra={"resolution": self.backend.resolution})
            for item in group:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        elapsed = time.monotonic() - started
        self.metrics.batch_size.labels(self._label).observe(len(group))
        for row, item in enumerate(group):
            if not item.future.done():
                item.future.set_result(
                    Inference(
                        logit=float(out.logits[row]),
                        cam=out.cams[row],
                        embedding=out.embeddings[row],
                        queue_s=started - item.enqueued,
                        inference_s=elapsed,
                    )
                )
