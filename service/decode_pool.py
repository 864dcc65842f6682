"""DICOM decoding in worker processes, so a native codec fault costs one request only.

The codecs behind :func:`imaging.dicom.read_dicom` (OpenJPEG, CharLS, GDCM, libjpeg,
Pillow) are C and C++ libraries fed with bytes from the network. In a thread, one that
segfaults or aborts kills the service, and one that spins holds a worker for good. Here
each image is decoded by one of ``workers`` long-lived processes, each with an address
space limit (``RLIMIT_AS``, ``memory_mb``) and a wall-clock limit per image
(``timeout_s``). A worker that dies, overruns its time (it is then killed) or runs out of
memory is replaced, and only that request is answered, with
:class:`service.errors.DecoderFailedError` (422: the same bytes would fail again):
``decoder_crashed``, ``decode_timeout`` or ``decode_memory_exceeded``.

The body goes in and the pixels come back through a shared-memory segment per worker
(a file in ``/dev/shm``, reserved with ``posix_fallocate`` so writing it can never SIGBUS,
and unlinked as soon as both sides have it open, so nothing is left behind when either
side dies). A body or an image larger than the segment, or a machine without room for
one, goes through the pipe. The rest of :class:`imaging.dicom.DecodedImage` (header
facts, timings) is pickled.

Threads: :meth:`DecodePool.decode` blocks its calling thread until a worker answers; any
number of threads may call it (each takes a free worker, waiting for one if all are busy).
Workers start with ``forkserver``: a fork from a clean server process with the imaging
modules preloaded (no parent threads copied, a restart in a fraction of a second).
"""

from __future__ import annotations

import importlib
import logging
import mmap
import multiprocessing as mp
import os
import pickle
import queue
import resource
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np

from imaging.dicom import DecodedImage, read_dicom
from imaging.errors import ImagingError
from service.errors import DecoderFailedError, ServiceError

log = logging.getLogger(__name__)

#: shared-memory segment per worker: 32 MiB, a float32 image up to 8.4 Mpx (2896 x 2896);
#: larger ones (a 3072 x 3072 DR image) travel through the pipe. Small enough for Docker's
#: default 64 MiB /dev/shm with two workers.
SEGMENT_BYTES = 32 * 1024 * 1024
#: how long a new worker may take to import the codecs and say it is ready
START_TIMEOUT_S = 60.0

_PIXELS_IN_SEGMENT = "segment"
_PIXELS_IN_PIPE = "pipe"


class DecodeWorkersError(ServiceError):
    """No decode worker could be started (the service cannot decode at all)."""

    code = "decoder_unavailable"
    http_status = 503
    retry_after_s = 5


# ------------------------------------------------------------------------ the worker side
def _shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def _worker_main(
    conn: Connection,
    segment_path: str | None,
    segment_bytes: int,
    memory_mb: int,
    plugins: Sequence[str],
    decoder_threads: int,
) -> None:
    """One worker: limits, plugins, then decode jobs until the pipe closes.

    A job is ``(size, max_pixels, min_side)`` with the body's ``size`` bytes in the segment,
    or ``size == -1`` and the body next on the pipe; the answer ``("ok", decoded-without-pixels,
    where, shape)`` followed, for ``where == "pipe"``, by the pixel bytes, or ``("refused",
    ImagingError)``, ``("memory", None)``, ``("error", type name)``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from imaging.reduced import configure_decoder_threads

    configure_decoder_threads(decoder_threads)
    for name in plugins:
        importlib.import_module(name)
    segment: mmap.mmap | None = None
    if segment_path is not None:
        with open(segment_path, "r+b") as fh:
            segment = mmap.mmap(fh.fileno(), segment_bytes)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            size, max_pixels, min_side = conn.recv()
            # a body that fits came through the segment (one copy each side, no pipe)
            body = bytes(segment[:size]) if size >= 0 and segment is not None else conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            decoded = read_dicom(body, max_pixels=max_pixels, min_side=min_side)
        except ImagingError as exc:
            conn.send(("refused", _portable(exc)))
            continue
        except MemoryError:
            conn.send(("memory", None))
            return  # a process that ran out of memory is not trusted with the next image
        except Exception as exc:  # a bug, not the input's fault: the service logs a 500
            conn.send(("error", type(exc).__name__))
            continue
        try:
            pixels = np.ascontiguousarray(decoded.pixels, dtype=np.float32)
            meta = replace(decoded, pixels=np.empty((0, 0), np.float32))
            if segment is not None and pixels.nbytes <= segment_bytes:
                np.frombuffer(segment, np.float32, pixels.size).reshape(pixels.shape)[:] = pixels
                conn.send(("ok", meta, _PIXELS_IN_SEGMENT, pixels.shape))
            else:
                payload = pixels.tobytes()
                conn.send(("ok", meta, _PIXELS_IN_PIPE, pixels.shape))
                conn.send_bytes(payload)
        except MemoryError:
            conn.send(("memory", None))
            return


def _portable(exc: ImagingError) -> ImagingError:
    """``exc`` if it survives pickling, else a plain ImagingError with its code and message
    (an error class with its own ``__init__`` signature would not unpickle)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        plain = ImagingError(exc.message)
        plain.code = exc.code
        return plain


# ------------------------------------------------------------------------ the parent side
@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    segment: mmap.mmap | None
    pid: int
    #: an image was sent and its answer not wholly read: the pipe may hold stale data
    busy: bool = False


class DecodePool:
    """``workers`` decode processes; :meth:`decode` is ``read_dicom`` in one of them."""

    def __init__(
        self,
        workers: int,
        *,
        timeout_s: float,
        memory_mb: int,
        plugins: Sequence[str] = (),
        decoder_threads: int = 1,
        segment_bytes: int = SEGMENT_BYTES,
        on_failure: Any = None,
    ) -> None:
        """``on_failure(reason)`` is called for each worker lost (``crashed``, ``timeout``,
        ``memory``), e.g. to count it in a metric. ``segment_bytes`` 0: pixels always go
        through the pipe (the benchmark's comparison)."""
        if workers < 1:
            raise ValueError("a decode pool needs at least one worker")
        self.size = workers
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.plugins = tuple(plugins)
        self.decoder_threads = decoder_threads
        self.segment_bytes = segment_bytes
        self.on_failure = on_failure
        self.restarts = 0
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        self._context = mp.get_context("forkserver")
        self._context.set_forkserver_preload(["imaging.dicom", "imaging.reduced", "numpy"])
        self._closed = threading.Event()
        self._use_segments = True
        self._pids: set[int] = set()

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start every worker; raise :class:`DecodeWorkersError` when one cannot start."""
        for _ in range(self.size):
            self._idle.put(self._spawn())

    def close(self) -> None:
        """Stop the workers (idle ones now; busy ones when their image is done)."""
        self._closed.set()
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                break
            if worker is not None:
                self._stop(worker)

    def _segment_file(self) -> str | None:
        """A reserved shared-memory file for a new worker, or None (pipe only)."""
        if not self._use_segments or self.segment_bytes <= 0:
            return None
        fd, path = tempfile.mkstemp(prefix="sharpcxr-decode-", dir=_shm_dir())
        try:
            os.posix_fallocate(fd, 0, self.segment_bytes)
        except OSError as exc:
            os.close(fd)
            os.unlink(path)
            self._use_segments = False
            log.warning(
                "no room for decode shared memory; pixels go through pipes",
                extra={"error": type(exc).__name__, "bytes": self.segment_bytes},
            )
            return None
        os.close(fd)
        return path

    def _spawn(self) -> _Worker:
        """A started, ready worker, or :class:`DecodeWorkersError` (never another type:
        callers keep the pool's slot count on that one exception); nothing leaks."""
        path: str | None = None
        parent_conn = child_conn = None
        process: BaseProcess | None = None
        try:
            path = self._segment_file()
            parent_conn, child_conn = self._context.Pipe(duplex=True)
            process = self._context.Process(
                target=_worker_main,
                args=(
                    child_conn,
                    path,
                    self.segment_bytes,
                    self.memory_mb,
                    self.plugins,
                    self.decoder_threads,
                ),
                name="sharpcxr-decode",
                daemon=True,
            )
            process.start()
            child_conn.close()
            child_conn = None
            if not parent_conn.poll(START_TIMEOUT_S):
                raise DecodeWorkersError("a decode worker did not start in time")
            kind, pid = parent_conn.recv()
            if kind != "ready":
                raise DecodeWorkersError("a decode worker did not start")
            segment = None
            if path is not None:
                with open(path, "r+b") as fh:
                    segment = mmap.mmap(fh.fileno(), self.segment_bytes)
        except Exception as exc:
            exit_code = None
            if process is not None and process.pid is not None:  # only a started one
                process.kill()
                process.join(5)
                exit_code = process.exitcode
            for conn in (parent_conn, child_conn):
                if conn is not None:
                    conn.close()
            if isinstance(exc, DecodeWorkersError):
                raise
            raise DecodeWorkersError(
                f"a decode worker exited at start (exit code {exit_code}): "
                f"{type(exc).__name__}; check SHARPCXR_DECODE_MEMORY_MB "
                f"({self.memory_mb} MB) and SHARPCXR_DECODER_PLUGINS"
            ) from None
        finally:
            if path is not None:
                Path(path).unlink(missing_ok=True)  # both sides hold it open: nothing leaks
        self._pids.add(int(pid))
        return _Worker(process, parent_conn, segment, int(pid))

    def pids(self) -> list[int]:
        """The worker processes' PIDs (for memory accounting in tests and benchmarks)."""
        return sorted(self._pids)

    def _stop(self, worker: _Worker) -> None:
        self._pids.discard(worker.pid)
        worker.conn.close()  # the worker's recv sees EOF and returns
        worker.process.join(2)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(2)
        if worker.segment is not None:
            worker.segment.close()

    def _replace(self, worker: _Worker, reason: str) -> None:
        """Kill ``worker``, count it, and put a fresh one in the pool."""
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(5)
        worker.conn.close()
        self._pids.discard(worker.pid)
        if worker.segment is not None:
            worker.segment.close()
        self.restarts += 1
        if self.on_failure is not None:
            self.on_failure(reason)
        if self._closed.is_set():
            return
        try:
            fresh = self._spawn()
        except Exception:
            log.error("decode worker could not be restarted")
            self._idle.put(None)  # the slot stays; the next caller tries again
            return
        if self._closed.is_set():
            self._stop(fresh)
        else:
            self._idle.put(fresh)

    # -------------------------------------------------------------- one image
    def decode(self, body: bytes, *, max_pixels: int, min_side: int | None = None) -> DecodedImage:
        """``read_dicom(body, max_pixels=, min_side=)`` in a worker process.

        Raises what ``read_dicom`` raises (:class:`imaging.errors.ImagingError`), or
        :class:`DecoderFailedError` when the worker died, ran past ``timeout_s`` or out of
        memory on this image."""
        if self._closed.is_set():
            raise DecodeWorkersError("the decode pool is closed")
        worker = self._idle.get()
        while worker is not None and not worker.process.is_alive():
            # died while idle (OOM killer, an operator): not this image's fault
            self._lost(worker, "crashed", time.monotonic(), 0)
            worker = self._idle.get()
        if worker is None:
            try:
                worker = self._spawn()
            except BaseException:
                self._idle.put(None)
                raise
        try:
            return self._decode_in(worker, body, max_pixels, min_side)
        finally:
            if worker.busy and worker.process.is_alive() and not worker.conn.closed:
                # an answer may still be in the pipe: never give this worker another image
                self._lost(worker, "crashed", time.monotonic(), len(body))
            elif worker.process.is_alive() and not worker.conn.closed:
                if self._closed.is_set():
                    self._stop(worker)
                else:
                    self._idle.put(worker)

    def _decode_in(
        self, worker: _Worker, body: bytes, max_pixels: int, min_side: int | None
    ) -> DecodedImage:
        started = time.monotonic()
        worker.busy = True  # until its whole answer is read (decode() checks)
        try:
            if worker.segment is not None and len(body) <= self.segment_bytes:
                worker.segment[: len(body)] = body
                worker.conn.send((len(body), max_pixels, min_side))
            else:
                worker.conn.send((-1, max_pixels, min_side))
                worker.conn.send_bytes(body)
            answered = worker.conn.poll(self.timeout_s)
            answer = worker.conn.recv() if answered else None
            kind = answer[0] if answer is not None else "timeout"
            if kind == "ok" and answer is not None:
                _, meta, where, shape = answer
                if where == _PIXELS_IN_SEGMENT:
                    assert worker.segment is not None
                    count = int(np.prod(shape))
                    view = np.frombuffer(worker.segment, np.float32, count)
                    pixels = view.reshape(shape).copy()  # the segment is reused next image
                else:
                    raw = bytearray(worker.conn.recv_bytes())  # writeable, as read_dicom's
                    pixels = np.frombuffer(raw, np.float32).reshape(shape)
                worker.busy = False
                decoded: DecodedImage = replace(meta, pixels=pixels)
                return decoded
            worker.busy = kind == "timeout"  # a late answer may still come: never reuse
        except (EOFError, OSError, BrokenPipeError):
            worker.busy = False
            self._lost(worker, "crashed", started, len(body))
            raise DecoderFailedError(
                "decoder_crashed",
                "the image decoder crashed on this file (it was restarted; other requests "
                "are unaffected); the file is probably corrupt: send it again re-encoded, "
                "or uncompressed",
            ) from None
        if kind == "timeout":
            worker.busy = False  # _lost kills and replaces it here
            self._lost(worker, "timeout", started, len(body))
            raise DecoderFailedError(
                "decode_timeout",
                f"decoding the image took longer than {self.timeout_s:g} s "
                "(SHARPCXR_DECODE_TIMEOUT_S); the file is probably corrupt or hostile",
            )
        assert answer is not None
        if kind == "refused":
            raise answer[1]
        if kind == "memory":
            self._lost(worker, "memory", started, len(body))
            raise DecoderFailedError(
                "decode_memory_exceeded",
                f"decoding the image needed more than the decoder's {self.memory_mb} MB "
                "(SHARPCXR_DECODE_MEMORY_MB); the file declares more data than it holds, "
                "or is too large",
            )
        raise RuntimeError(f"the decode worker failed with {answer[1]}")

    def _lost(self, worker: _Worker, reason: str, started: float, size: int) -> None:
        if worker.process.is_alive() and reason != "memory":
            worker.process.kill()
        worker.process.join(5)
        log.warning(
            "decode worker lost",
            extra={
                "reason": reason,
                "exit_code": worker.process.exitcode,
                "worker_pid": worker.pid,
                "bytes": size,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        self._replace(worker, reason)
