"""Decode worker processes: planted codec faults cost one image, never the pool."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from imaging.dicom import read_dicom
from imaging.errors import NotDicomError, PixelBudgetError
from service.decode_pool import DecodePool
from service.errors import DecoderFailedError
from tests.conftest import make_dicom
from tests.service import planted_codecs

MAX_PIXELS = 36_000_000


@pytest.fixture(scope="module")
def pool() -> Iterator[tuple[DecodePool, list[str]]]:
    failures: list[str] = []
    p = DecodePool(
        2,
        timeout_s=3.0,
        memory_mb=3072,
        plugins=["tests.service.planted_codecs"],
        on_failure=failures.append,
    )
    p.start()
    yield p, failures
    p.close()


@pytest.fixture(scope="module")
def image() -> tuple[bytes, np.ndarray]:
    pixels = np.random.default_rng(3).integers(0, 4096, (300, 200), dtype=np.uint16)
    body = make_dicom(pixels)
    return body, read_dicom(body).pixels


def test_decodes_like_read_dicom(pool: tuple[DecodePool, list[str]], image) -> None:
    body, expected = image
    decoded = pool[0].decode(body, max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(decoded.pixels, expected)
    assert decoded.facts == read_dicom(body).facts
    assert decoded.pixels.flags.writeable and decoded.pixels.dtype == np.float32


def test_refusals_come_back_as_the_same_error(pool: tuple[DecodePool, list[str]], image) -> None:
    with pytest.raises(NotDicomError, match="not DICOM"):
        pool[0].decode(b"\x00" * 400, max_pixels=MAX_PIXELS)
    with pytest.raises(PixelBudgetError, match="over the budget"):
        pool[0].decode(image[0], max_pixels=1000)


@pytest.mark.parametrize(
    ("marker", "code", "reason"),
    [
        (planted_codecs.ABORT, "decoder_crashed", "crashed"),
        (planted_codecs.SEGFAULT, "decoder_crashed", "crashed"),
        (planted_codecs.HANG, "decode_timeout", "timeout"),
        (planted_codecs.HOG, "decode_memory_exceeded", "memory"),
    ],
)
def test_a_planted_fault_costs_one_image(
    pool: tuple[DecodePool, list[str]], image, marker: bytes, code: str, reason: str
) -> None:
    decode_pool, failures = pool
    before = (decode_pool.restarts, len(failures), set(decode_pool.pids()))
    started = time.monotonic()
    with pytest.raises(DecoderFailedError) as caught:
        decode_pool.decode(planted_codecs.planted_rle(marker), max_pixels=MAX_PIXELS)
    elapsed = time.monotonic() - started
    assert caught.value.code == code
    assert caught.value.http_status == 422
    assert decode_pool.restarts == before[0] + 1
    assert failures[before[1] :] == [reason]
    if reason == "timeout":
        assert 3.0 <= elapsed < 3.0 + 5.0  # the limit, plus the replacement's start
    # the worker was replaced: same number of workers, one new PID
    assert len(decode_pool.pids()) == 2
    assert set(decode_pool.pids()) != before[2]
    # and the pool serves the next images as before, on every worker
    body, expected = image
    for _ in range(4):
        np.testing.assert_array_equal(
            decode_pool.decode(body, max_pixels=MAX_PIXELS).pixels, expected
        )


def test_an_unmarked_frame_decodes_with_the_real_plugins(pool) -> None:
    decoded = pool[0].decode(planted_codecs.planted_rle(b""), max_pixels=MAX_PIXELS)
    assert decoded.pixels.shape == (64, 64)


def test_many_threads_share_the_workers(pool, image) -> None:
    body, expected = image
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                assert np.array_equal(pool[0].decode(body, max_pixels=MAX_PIXELS).pixels, expected)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)  # a deadlocked pool fails here
    assert not errors


def test_pixels_too_large_for_the_segment_go_through_the_pipe(image) -> None:
    body, expected = image
    small = DecodePool(1, timeout_s=10, memory_mb=3072, segment_bytes=4096)
    small.start()
    try:
        np.testing.assert_array_equal(small.decode(body, max_pixels=MAX_PIXELS).pixels, expected)
    finally:
        small.close()


def test_a_worker_that_cannot_start_is_a_clear_error() -> None:
    from service.decode_pool import DecodeWorkersError

    broken = DecodePool(1, timeout_s=5, memory_mb=3072, plugins=["no_such_module_here"])
    with pytest.raises(DecodeWorkersError, match="SHARPCXR_DECODER_PLUGINS"):
        broken.start()
    broken.close()


def test_a_worker_killed_while_idle_costs_no_request(image) -> None:
    import os
    import signal

    body, expected = image
    pool = DecodePool(1, timeout_s=10, memory_mb=3072)
    pool.start()
    try:
        [pid] = pool.pids()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
        np.testing.assert_array_equal(pool.decode(body, max_pixels=MAX_PIXELS).pixels, expected)
        assert pool.pids() != [pid]
    finally:
        pool.close()


def test_a_failed_restart_keeps_the_slot(image, monkeypatch: pytest.MonkeyPatch) -> None:
    body, expected = image
    pool = DecodePool(1, timeout_s=3, memory_mb=3072, plugins=["tests.service.planted_codecs"])
    pool.start()
    real_spawn = pool._spawn
    calls = {"n": 0}

    def failing_once():
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("no file descriptors")  # not a DecodeWorkersError
        return real_spawn()

    monkeypatch.setattr(pool, "_spawn", failing_once)
    try:
        with pytest.raises(DecoderFailedError):
            pool.decode(planted_codecs.planted_rle(planted_codecs.ABORT), max_pixels=MAX_PIXELS)
        # the restart failed, the slot is kept: the next call starts a worker and decodes
        np.testing.assert_array_equal(pool.decode(body, max_pixels=MAX_PIXELS).pixels, expected)
    finally:
        pool.close()


def test_a_closed_pool_refuses_at_once(image) -> None:
    from service.decode_pool import DecodeWorkersError

    pool = DecodePool(1, timeout_s=10, memory_mb=3072)
    pool.start()
    pool.close()
    with pytest.raises(DecodeWorkersError, match="closed"):
        pool.decode(image[0], max_pixels=MAX_PIXELS)
