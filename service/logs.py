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
    "reason", "exit_code", "worker_pid", "seconds", "in_flight", "timeout_s", "signal",
    "error", "plugin", "transfer_syntax",
)  # fmt: skip
#: third-party loggers that see raw network input: WARNING and up, without tracebacks
#: (pynetdicom logs a traceback, and at DEBUG whole PDUs, for a malformed association)
NETWORK_LIBRARIES = ("pynetdicom",)


class StripTraceback(logging.Filter):
    """On records of :data:`NETWORK_LIBRARIES` (and their child loggers), replace the
    traceback by its exception type, appended to the message. A handler filter: logger
    filters do not apply to child loggers' records."""

    def filter(self, record: logging.LogRecord) -> bool:
        library = record.name.split(".")[0] in NETWORK_LIBRARIES
        if library and record.exc_info:
            kind = record.exc_info[0].__name__ if record.exc_info[0] else "error"
            record.msg, record.args = f"{record.getMessage()} ({kind})", ()
            record.exc_info = record.exc_text = None
        return True


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
    handler.addFilter(StripTraceback())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # The service writes its own access log line (request id, status, timings).
    logging.getLogger("uvicorn.access").disabled = True
    for name in NETWORK_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
