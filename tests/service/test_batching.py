"""Dynamic batching: the pure collector on a plain queue, and the batcher on a real model."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from service.backends.onnxruntime import OnnxRuntimeBackend
from service.batching import Batcher, collect_batch
from service.errors import DeadlineExceededError, OverloadedError
from service.metrics import Metrics
from tests.service.conftest import model_file


def test_collect_batch_takes_backlog_at_once() -> None:
    async def go() -> list[int]:
        q: asyncio.Queue[int] = asyncio.Queue()
        for i in range(10):
            q.put_nowait(i)
        return await collect_batch(q, max_size=4, timeout_s=10.0)

    started = time.monotonic()
    assert asyncio.run(go()) == [0, 1, 2, 3]
    assert time.monotonic() - started < 1.0  # a full batch does not wait for the timeout


def test_collect_batch_waits_at_most_the_timeout_after_the_first_item() -> None:
    async def go() -> tuple[list[int], float]:
        q: asyncio.Queue[int] = asyncio.Queue()

        async def producer() -> None:
            await asyncio.sleep(0.05)
            q.put_nowait(1)
            await asyncio.sleep(0.02)
            q.put_nowait(2)
            await asyncio.sleep(1.0)
            q.put_nowait(3)  # too late for this batch

        task = asyncio.create_task(producer())
        t0 = time.monotonic()
        batch = await collect_batch(q, max_size=8, timeout_s=0.2)
        elapsed = time.monotonic() - t0
        task.cancel()
        return batch, elapsed

    batch, elapsed = asyncio.run(go())
    assert batch == [1, 2]
    assert 0.2 <= elapsed < 0.9  # 0.05 s for the first item + the 0.2 s window


def test_collect_batch_goes_at_once_when_nothing_is_coming() -> None:
    """A lone request waits no window: nobody upstream is bringing it company."""

    async def go() -> tuple[list[int], float]:
        q: asyncio.Queue[int] = asyncio.Queue()
        q.put_nowait(1)
        t0 = time.monotonic()
        batch = await collect_batch(q, max_size=8, timeout_s=5.0, coming=lambda: 0)
        return batch, time.monotonic() - t0

    batch, elapsed = asyncio.run(go())
    assert batch == [1] and elapsed < 0.5


def test_collect_batch_waits_for_what_is_coming() -> None:
    """While requests are on their way, the window still forms a batch."""

    async def go() -> list[int]:
        q: asyncio.Queue[int] = asyncio.Queue()
        on_the_way = [2]
        q.put_nowait(1)

        async def producer() -> None:
            for item in (2, 3):
                await asyncio.sleep(0.02)
                on_the_way[0] -= 1
                q.put_nowait(item)

        task = asyncio.create_task(producer())
        batch = await collect_batch(q, max_size=8, timeout_s=2.0, coming=lambda: on_the_way[0])
        await task
        return batch

    started = time.monotonic()
    assert asyncio.run(go()) == [1, 2, 3]
    assert time.monotonic() - started < 1.5  # left as soon as the last one came, not at 2 s


def test_an_arrival_counts_once() -> None:
    async def go() -> None:
        from concurrent.futures import ThreadPoolExecutor

        class Stub:
            resolution, max_batch = 64, None

        with ThreadPoolExecutor(1) as pool:
            b = Batcher(Stub(), pool, Metrics(), max_batch_size=4, batch_timeout_s=0.01,  # type: ignore[arg-type]
                        max_queue=4)  # fmt: skip
            with b.on_the_way() as first, b.on_the_way():
                assert b.coming == 2
                first.arrive()
                first.arrive()
                assert b.coming == 1
            assert b.coming == 0

    asyncio.run(go())


def _backend(models_dir: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(model_file(models_dir, 128, "onnx"), 128, intra_op_threads=1)


def test_batcher_forms_batches_and_returns_each_row(models_dir: Path) -> None:
    backend = _backend(models_dir)
    images = np.random.default_rng(0).normal(size=(6, 1, 128, 128)).astype(np.float32)
    reference = backend.infer(images)

    async def go() -> list[float]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            metrics = Metrics()
            b = Batcher(backend, pool, metrics, max_batch_size=4, batch_timeout_s=0.05,
                        max_queue=16)  # fmt: skip
            b.start()
            deadline = time.monotonic() + 30
            results = await asyncio.gather(*(b.infer(img, "gradcam", deadline) for img in images))
            await b.stop()
            batches = metrics.registry.get_sample_value(
                "sharpcxr_batch_size_count", {"resolution": "128"}
            )
            images_run = metrics.registry.get_sample_value(
                "sharpcxr_batch_size_sum", {"resolution": "128"}
            )
            assert (batches, images_run) == (2, 6)  # 4 + 2: the backlog formed full batches
            for r, cam, emb in zip(results, reference.cams, reference.embeddings, strict=True):
                assert np.allclose(r.cam, cam, atol=1e-5)
                assert np.allclose(r.embedding, emb, atol=1e-5)
            return [r.logit for r in results]

    logits = asyncio.run(go())
    assert np.allclose(logits, reference.logits, atol=1e-5)  # each request got its own row


def test_a_lone_request_waits_no_window_and_a_crowd_still_batches(models_dir: Path) -> None:
    """With a 0.5 s window: a request alone is answered well inside it; requests that were
    counted on their way before the first one queued are batched with it."""
    backend = _backend(models_dir)
    image = np.zeros((1, 128, 128), np.float32)

    async def go() -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            metrics = Metrics()
            b = Batcher(backend, pool, metrics, max_batch_size=8, batch_timeout_s=0.5,
                        max_queue=16)  # fmt: skip
            b.start()
            deadline = time.monotonic() + 30
            await b.infer(image, "gradcam", deadline)  # warm
            with b.on_the_way() as arrival:
                lone = await b.infer(image, "gradcam", deadline, arrival)
            assert lone.queue_s < 0.1

            async def later(delay: float) -> None:
                with b.on_the_way() as arrival:
                    await asyncio.sleep(delay)  # "decoding"
                    await b.infer(image, "gradcam", deadline, arrival)

            await asyncio.gather(*(later(0.01 * i) for i in range(4)))
            await b.stop()
            batches = metrics.registry.get_sample_value(
                "sharpcxr_batch_size_count", {"resolution": "128"}
            )
            assert batches == 3  # warm, lone, and the four together

    asyncio.run(go())


def test_batcher_full_queue_and_deadline(models_dir: Path) -> None:
    backend = _backend(models_dir)
    image = np.zeros((1, 128, 128), np.float32)

    async def go() -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            b = Batcher(backend, pool, Metrics(), max_batch_size=1, batch_timeout_s=0.0,
                        max_queue=2)  # fmt: skip
            # Not started: nothing drains the queue, so the third request finds it full.
            deadline = time.monotonic() + 0.3
            waiting = [asyncio.create_task(b.infer(image, "gradcam", deadline)) for _ in range(2)]
            await asyncio.sleep(0)
            with pytest.raises(OverloadedError) as info:
                await b.infer(image, "gradcam", deadline)
            assert info.value.http_status == 503 and info.value.retry_after_s
            for task in waiting:  # and those waiting time out at their deadline
                with pytest.raises(DeadlineExceededError):
                    await task
            b.start()  # expired items are dropped, not run; fresh ones still work
            await asyncio.sleep(0.1)
            assert b.queue.empty()
            out = await b.infer(image, "gradcam", time.monotonic() + 30)
            assert np.isfinite(out.logit) and out.embedding.ndim == 1
            await b.stop()

    asyncio.run(go())
