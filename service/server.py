"""Run the app under uvicorn with the service's settings and logging."""

from __future__ import annotations

import logging

import uvicorn

from service.app import create_app
from service.draining import DrainingServer
from service.errors import ModelFileError
from service.http_limits import uvicorn_limits
from service.registry import preflight
from service.settings import Settings, get_settings

log = logging.getLogger("sharpcxr.service")


def serve(
    host: str | None = None, port: int | None = None, settings: Settings | None = None
) -> int:
    """Serve until interrupted; returns the process exit status (1 when start-up failed)."""
    settings = settings or get_settings()
    if host is not None or port is not None:
        settings = settings.model_copy(
            update={"host": host or settings.host, "port": settings.port if port is None else port}
        )
    app = create_app(settings)  # configures logging
    try:
        preflight(settings)
    except ModelFileError as exc:
        log.error(f"cannot start: {exc}")
        return 1
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # create_app configured JSON logging
        access_log=False,
        # after the drain (service.draining) only idle connections are left to close
        timeout_graceful_shutdown=5,
        server_header=False,
        # header and keep-alive timeouts, connection limit, head size (README "Hardening")
        **uvicorn_limits(settings),
    )
    server = DrainingServer(
        config,
        app.state.runtime,
        shutdown_timeout_s=settings.shutdown_timeout_s,
        drain_min_s=settings.drain_min_s,
    )
    base = f"http://{settings.host}:{settings.port}"
    log.info(f"starting on {base} (docs {base}/docs, metrics {base}/metrics)")
    server.run()
    return 0 if server.started else 1
