"""Structured JSON logs, one object per line, with the request id of the current request.

Log records carry only what the service chose to put there: messages written by this
code, plus the ``extra`` fields listed in :data:`SAFE_FIELDS` (sizes, timings, codes,
resolutions). Request bodies, DICOM header values and query strings are never logged, so
no patient identifier can reach a log line. Tracebacks of unexpected errors are logged
(they contain code locations and exception messages, not request data: the decoders'
own messages are replaced by domain errors before they get here).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

#: The id of the request being handled in this task (``"-"`` outside requests).
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

#: ``extra=`` keys copied into the JSON object; anything else is dropped.
SAFE_FIELDS = (
    "endpoint", "method", "path", "status", "duration_ms", "resolution", "resolutions",
    "bytes", "code", "model", "backend", "load_s", "batch_size", "host", "port", "models",
    "settings", "probability", "positive", "timings_ms", "client", "jobs", "deliveries",
)  # fmt: skip


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "request_id", ...safe extras, "exc"}``."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        for key in SAFE_FIELDS:
            if key in record.__dict__:
                payload[key] = record.__dict__[key]
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Route the root logger (and uvicorn's) through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # The service writes its own access log line (request id, status, timings).
    logging.getLogger("uvicorn.access").disabled = True
