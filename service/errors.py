"""Domain errors of the service, and the one place that maps every error to HTTP.

Each service error has a stable ``code``, an HTTP status and a message that says what is
wrong and how to fix it. The imaging path's errors (:mod:`imaging.errors`) know nothing of
HTTP: :data:`IMAGING_STATUS` gives their statuses here (400: the bytes are not a usable
DICOM file; 422: a valid DICOM that cannot be assessed), and :data:`IMAGING_HINTS` adds the
service setting that moves a limit. :func:`error_status_and_code` turns any error into
``(status, code, message)`` for DESIGN's JSON body ``{"error": {"code", "message",
"request_id"}}``. Anything else that escapes a route becomes a generic 500 whose body says
nothing about the input: the traceback goes to the log (without request data), never to
the client.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cxrmodel.manifest import ModelFileError as ModelFileError  # re-exported for the service
from imaging.errors import (
    ColourImageError,
    CorruptDicomError,
    ImagingError,
    MultiFrameError,
    NoPixelDataError,
    NotDicomError,
    PixelBudgetError,
    UnsupportedImageError,
    UnsupportedTransferSyntaxError,
)
from imaging.gate import Finding


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


class NotFoundError(ServiceError):
    """A job, study or result object the service does not hold."""

    code = "not_found"
    http_status = 404


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


class ShuttingDownError(ServiceError):
    """SIGTERM received: requests already accepted finish, new ones go elsewhere."""

    code = "shutting_down"
    http_status = 503
    retry_after_s = 2

    def __init__(self) -> None:
        super().__init__(
            "the service is shutting down and accepts no new requests; retry after the "
            "number of seconds in Retry-After (another replica, or this one restarted)"
        )


class RateLimitedError(ServiceError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, per_minute: float, retry_after_s: int) -> None:
        super().__init__(
            f"too many requests for this API key (limit {per_minute:g} per minute, "
            "SHARPCXR_RATE_LIMIT_PER_MINUTE); retry after the number of seconds in Retry-After"
        )
        self.retry_after_s = retry_after_s


class UploadTimeoutError(ServiceError):
    code = "upload_timeout"
    http_status = 408

    def __init__(self, idle_s: float) -> None:
        super().__init__(
            f"the upload paused for more than {idle_s:g} s (SHARPCXR_UPLOAD_IDLE_TIMEOUT_S); "
            "send the body without stalling"
        )


class DecoderFailedError(ServiceError):
    """The isolated decoder of this image died, ran out of time or of memory.

    422: the same bytes would fail the same way again; the worker is replaced and other
    requests are unaffected. ``code`` is ``decoder_crashed``, ``decode_timeout`` or
    ``decode_memory_exceeded``."""

    http_status = 422

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class GateRefusedError(ServiceError):
    """The gate found that the model must not assess this image (``SHARPCXR_GATE=refuse``).

    ``code`` is the first finding's (e.g. ``not_chest``); the message joins every
    finding's message, so a radiographer sees all that is wrong at once.
    """

    http_status = 422

    def __init__(self, findings: Sequence[Finding]) -> None:
        if not findings:
            raise ValueError("a gate refusal needs at least one finding")
        super().__init__(
            " ".join(f.message for f in findings)
            + " (SHARPCXR_GATE=flag answers such images with status not_assessable instead)"
        )
        self.code = findings[0].code
        self.findings = list(findings)


#: HTTP status of each imaging refusal (the most specific class wins; see the MRO walk)
IMAGING_STATUS: dict[type[ImagingError], int] = {
    NotDicomError: 400,
    CorruptDicomError: 400,  # and TruncatedDicomError, its subclass
    NoPixelDataError: 422,
    ColourImageError: 422,
    MultiFrameError: 422,
    UnsupportedTransferSyntaxError: 422,
    PixelBudgetError: 422,
    UnsupportedImageError: 422,
}
#: the setting that moves the limit behind an imaging refusal, appended to its message
IMAGING_HINTS: dict[type[ImagingError], str] = {PixelBudgetError: "SHARPCXR_MAX_PIXELS"}


def _imaging_status(exc: ImagingError) -> int:
    for cls in type(exc).__mro__:
        if cls in IMAGING_STATUS:
            return IMAGING_STATUS[cls]
    return 422  # a valid file the imaging path cannot use


def error_status_and_code(exc: BaseException) -> tuple[int, str, str]:
    """``(http_status, code, message)`` for any exception; unknown ones become a bare 500."""
    if isinstance(exc, ServiceError):
        return exc.http_status, exc.code, exc.message
    if isinstance(exc, ImagingError):
        message = exc.message
        hint = next((h for c, h in IMAGING_HINTS.items() if isinstance(exc, c)), None)
        if hint:
            message = f"{message} ({hint})"
        return _imaging_status(exc), exc.code, message
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
