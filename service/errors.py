"""Domain errors of the service, and the one place that maps every error to HTTP.

Each error has a stable ``code``, an HTTP status and a message that says what is wrong and
how to fix it. :func:`error_response` turns any of them (and :class:`imaging.errors.
ImagingError`) into DESIGN's JSON body ``{"error": {"code", "message", "request_id"}}``.
Anything else that escapes a route becomes a generic 500 whose body says nothing about
the input: the traceback goes to the log (without request data), never to the client.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from imaging.errors import ImagingError


class ServiceError(Exception):
    """Base class: a request the service refuses (or cannot serve right now)."""

    code: str = "service_error"
    http_status: int = 400
    #: seconds for a ``Retry-After`` header (503s), ``None`` for no header
    retry_after_s: int | None = None
    headers: dict[str, str] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnauthorizedError(ServiceError):
    code = "unauthorized"
    http_status = 401
    headers = {"WWW-Authenticate": 'Bearer realm="sharpcxr"'}  # noqa: RUF012 - constant

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"{detail}; send `Authorization: Bearer <key>` or `X-API-Key: <key>` "
            "with one of the keys configured in SHARPCXR_API_KEYS"
        )


class PayloadTooLargeError(ServiceError):
    code = "payload_too_large"
    http_status = 413

    def __init__(self, limit_mb: float) -> None:
        super().__init__(
            f"the upload exceeds the limit of {limit_mb:g} MB (SHARPCXR_MAX_UPLOAD_MB); "
            "send one uncompressed or compressed single-frame radiograph"
        )


class UnsupportedMediaTypeError(ServiceError):
    code = "unsupported_media_type"
    http_status = 415

    def __init__(self, content_type: str) -> None:
        shown = content_type.split(";")[0].strip()[:80] or "(none)"
        super().__init__(
            f"content type {shown!r} is not accepted; send the DICOM file as the raw body "
            "with `Content-Type: application/dicom`, or as multipart/form-data in field `file`"
        )


class BadRequestError(ServiceError):
    """A malformed request (not the image itself): an empty body, a missing form field."""

    code = "bad_request"
    http_status = 400


class InvalidParameterError(ServiceError):
    """A query parameter with a value outside its contract."""

    code = "invalid_parameter"
    http_status = 422


class UnknownResolutionError(ServiceError):
    code = "unknown_resolution"
    http_status = 422

    def __init__(self, requested: Iterable[int], available: Sequence[int]) -> None:
        wanted = ", ".join(str(r) for r in requested)
        have = ", ".join(str(r) for r in sorted(available)) or "none"
        super().__init__(
            f"no model is loaded for resolution {wanted}; available resolutions: {have} "
            "(SHARPCXR_RESOLUTIONS selects which are loaded)"
        )
        self.available = sorted(available)


class UnsupportedMethodError(ServiceError):
    code = "unsupported_method"
    http_status = 422

    def __init__(self, method: str, backend: str, methods: Sequence[str]) -> None:
        super().__init__(
            f"saliency method {method[:40]!r} is not offered by backend {backend}; it offers: "
            f"{', '.join(methods)} (other pytorch-grad-cam methods need SHARPCXR_BACKEND=torch)"
        )


class OverloadedError(ServiceError):
    code = "overloaded"
    http_status = 503
    retry_after_s = 1

    def __init__(self, queue: str, capacity: int) -> None:
        super().__init__(
            f"the {queue} queue is full ({capacity} requests waiting); "
            "retry after the number of seconds in Retry-After"
        )


class DeadlineExceededError(ServiceError):
    code = "deadline_exceeded"
    http_status = 503
    retry_after_s = 2

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            f"the request did not finish within {timeout_s:g} s (SHARPCXR_REQUEST_TIMEOUT_S); "
            "the service is busy, retry later"
        )


class NotReadyError(ServiceError):
    code = "not_ready"
    http_status = 503
    retry_after_s = 5

    def __init__(self, detail: str = "models are still loading") -> None:
        super().__init__(f"the service is not ready: {detail}; poll /readyz")


class ModelFileError(RuntimeError):
    """A model file is missing or its sha256 differs from the manifest: refuse to start."""


def error_status_and_code(exc: BaseException) -> tuple[int, str, str]:
    """``(http_status, code, message)`` for any exception; unknown ones become a bare 500."""
    if isinstance(exc, ServiceError | ImagingError):
        return exc.http_status, exc.code, exc.message
    return 500, "internal_error", "the service failed to process this request; it was logged"


def error_headers(exc: BaseException) -> dict[str, str]:
    """Extra response headers of an error (``Retry-After``, ``WWW-Authenticate``)."""
    headers: dict[str, str] = {}
    if isinstance(exc, ServiceError):
        if exc.headers:
            headers.update(exc.headers)
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(exc.retry_after_s)
    return headers


def error_body(code: str, message: str, request_id: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message, "request_id": request_id}}
