"""Graceful shutdown: on SIGTERM stop admitting, finish what was accepted, then exit.

Kubernetes (and any orchestrator) sends SIGTERM and, at about the same time, starts
taking the pod out of its Service's endpoints; for a few seconds new requests still
arrive. uvicorn's own handling closes the listening socket at once, so those requests
would see a refused connection. Here instead:

1. the first SIGTERM (or SIGINT) puts the service in **draining**: ``/readyz`` answers 503
   ``draining``, ``sharpcxr_ready`` drops to 0 and ``sharpcxr_draining`` rises to 1, and
   every new request to the API, DICOMweb or the viewer is answered 503 ``shutting_down``
   with ``Retry-After`` (``/healthz`` and ``/metrics`` keep answering);
2. requests already accepted run to the end; the listener stays open while they do, and
   at least ``drain_min_s`` (so load balancers see ``/readyz`` fail). The C-STORE
   listener closes at once (DICOM senders retry a refused association); associations
   already open finish;
3. when none is left, or ``shutdown_timeout_s`` after the signal, uvicorn's shutdown
   runs: the listener closes, idle keep-alive connections are closed, then the lifespan
   stops the runtime (the C-STORE listener first, then the job workers: a job received
   is already in the durable job store and is finished after the restart).

A second signal skips the wait (uvicorn's shutdown at once); a third forces the exit.
The process exits with status 0 after a drain, not by re-raising the signal.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ShuttingDownError, error_body, error_headers, error_status_and_code
from service.logs import request_id_var
from service.runtime import ServiceRuntime

log = logging.getLogger("sharpcxr.service")

#: paths that answer while draining, uncounted: probes and scrapes must see the drain
OPERATIONAL = frozenset({"/healthz", "/readyz", "/metrics"})


class DrainMiddleware:
    """Counts requests in flight; while draining, answers new ones 503 ``shutting_down``.

    Sits inside :class:`service.middleware.ObservabilityMiddleware`, so refusals get a
    request id, a log line and the request metrics like any other answer."""

    def __init__(self, app: ASGIApp, runtime: ServiceRuntime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPERATIONAL:
            await self.app(scope, receive, send)
            return
        if self.runtime.draining:
            await self._refuse(scope, send)
            return
        self.runtime.in_flight += 1
        self.runtime.metrics.in_flight.set(self.runtime.in_flight)
        try:
            await self.app(scope, receive, send)
        finally:
            self.runtime.in_flight -= 1
            self.runtime.metrics.in_flight.set(self.runtime.in_flight)

    @staticmethod
    async def _refuse(scope: Scope, send: Send) -> None:
        exc = ShuttingDownError()
        status, code, message = error_status_and_code(exc)
        scope.setdefault("state", {})["error_code"] = code
        body = json.dumps(error_body(code, message, request_id_var.get())).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),  # the client's next request goes elsewhere
            *((k.lower().encode(), v.encode()) for k, v in error_headers(exc).items()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain above in front of its shutdown."""

    def __init__(
        self,
        config: uvicorn.Config,
        runtime: ServiceRuntime,
        *,
        shutdown_timeout_s: float,
        drain_min_s: float = 0.0,
    ) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.shutdown_timeout_s = shutdown_timeout_s
        self.drain_min_s = drain_min_s
        self.drain_started: float | None = None
        self.signals_seen = 0
        self.drain_announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the main thread between bytecodes: only flags here; on_tick acts on them.
        self.signals_seen += 1
        if self.signals_seen == 1 and self.started:
            self.drain_started = time.monotonic()
            self.runtime.draining = True  # a plain flag: the very next request is refused
            return
        if self.signals_seen >= 3:
            self.force_exit = True
        self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None and not self.drain_announced:
            self.drain_announced = True
            try:
                await self.runtime.begin_drain()
            except Exception as exc:  # the drain goes on: new requests are refused already
                log.error("drain start failed", extra={"error": type(exc).__name__})
            log.info(
                "draining: new requests get 503, accepted ones finish",
                extra={
                    "in_flight": self.runtime.in_flight,
                    "timeout_s": self.shutdown_timeout_s,
                    "signal": signal.Signals.SIGTERM.name,
                },
            )
        if self.drain_started is not None and not self.should_exit:
            waited = time.monotonic() - self.drain_started
            done = self.runtime.work_in_flight() == 0 and waited >= self.drain_min_s
            if done or waited >= self.shutdown_timeout_s:
                log.info(
                    "drained" if done else "drain timed out",
                    extra={"in_flight": self.runtime.work_in_flight(), "seconds": round(waited, 2)},
                )
                self.should_exit = True
        return await super().on_tick(counter)
