"""The outermost ASGI layer: request ids, the access log, request metrics, last-resort 500.

Each request gets an id (the client's ``X-Request-ID`` when it is short and plain, else a
fresh one), echoed in the ``X-Request-ID`` response header and in every error body and
log line. Labels are bounded: ``endpoint`` is the path template of the app's route that
matches the request (``/v1/predict``; a templated path keeps its ``{parameter}``), else
``other``, so no label takes a client-chosen value and a new route needs no list kept
by hand; ``resolution`` is what the route recorded in ``scope["state"]`` (a loaded
resolution, ``multi`` for compare, ``none`` otherwise).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from re import Pattern
from typing import Any

from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_body, error_status_and_code
from service.logs import request_id_var
from service.metrics import Metrics

log = logging.getLogger("sharpcxr.access")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: Endpoints whose traffic is not worth a log line per request at INFO level.
QUIET = frozenset({"/healthz", "/readyz", "/metrics"})
#: answers under these carry patient data (answers, pixels, UIDs): Cache-Control no-store
PRIVATE_PREFIXES = ("/v1/", "/dicomweb/")


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = str(value.decode("latin-1"))
            if _SAFE_ID.match(text):
                return text
    return uuid.uuid4().hex


class EndpointLabels:
    """Request path -> the path template of the app's route for it (``/v1/predict``,
    ``/v1/jobs/{job_id}``), else ``"other"``; the method is not considered, so a 405
    keeps its endpoint's label. The templates are read from the app's routes (included
    routers flattened) at the first request, when every route is in place."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self.routes = routes
        self._templates: list[tuple[Pattern[str], str]] | None = None

    def _compile(self) -> list[tuple[Pattern[str], str]]:
        templates = []
        for route in iter_route_contexts(self.routes):
            template = route.path_format or route.path
            if template:
                regex, template, _ = compile_path(template)
                templates.append((regex, template))
        return templates

    def __call__(self, scope: Scope) -> str:
        if self._templates is None:
            self._templates = self._compile()
        path = str(scope.get("path", ""))
        return next((t for regex, t in self._templates if regex.match(path)), "other")


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoint_of = EndpointLabels(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope)
        token = request_id_var.set(request_id)
        endpoint = self.endpoint_of(scope)
        status = 500
        response_started = False
        response_bytes = 0
        private = str(scope.get("path", "")).startswith(PRIVATE_PREFIXES)

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started, response_bytes
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                if private and not any(k.lower() == b"cache-control" for k, _ in headers):
                    # answers about patients' images are never stored by browsers or proxies
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                response_bytes += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            # Never a stack trace to the client; the log has it (no request data in it).
            log.exception("unhandled error", extra={"endpoint": endpoint})
            status, code, message = error_status_and_code(Exception())
            if not response_started:
                body = json.dumps(error_body(code, message, request_id)).encode()
                await send_wrapper(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send_wrapper({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - started
            state: dict[str, Any] = scope.get("state") or {}
            resolution = str(state.get("resolution_label", "none"))
            self.metrics.request_duration.labels(endpoint, resolution, str(status)).observe(elapsed)
            self.metrics.requests.labels(endpoint, resolution, str(status)).inc()
            error_code = state.get("error_code")
            if error_code:
                self.metrics.errors.labels(endpoint, str(error_code)).inc()
            level = logging.DEBUG if endpoint in QUIET and status < 400 else logging.INFO
            log.log(
                level,
                "request",
                extra={
                    "method": scope.get("method"),
                    "endpoint": endpoint,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "resolution": resolution,
                    "bytes": response_bytes,
                    "code": error_code,
                },
            )
            request_id_var.reset(token)
