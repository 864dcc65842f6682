"""Reading the uploaded DICOM: media type check, size limit enforced while streaming.

Accepted bodies (DESIGN): the raw Part 10 file with ``Content-Type: application/dicom``
(``application/octet-stream`` is accepted too, as many PACS clients send it), or
``multipart/form-data`` with the file in field ``file``. A declared ``Content-Length``
over the limit is refused before reading; otherwise the body is counted as it arrives and
refused as soon as it passes the limit, so an oversized upload never sits in memory.

A client that stalls mid-upload is answered 408 (:class:`UploadTimeoutError`) once the gap
between two body chunks passes ``SHARPCXR_UPLOAD_IDLE_TIMEOUT_S`` (read from the app's
settings), with ``Connection: close`` so the connection is freed with the answer. The gap,
not the total, is bounded: a slow but steady link still gets through, and
``SHARPCXR_REQUEST_TIMEOUT_S`` bounds the whole request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from service.errors import (
    BadRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    UploadTimeoutError,
)

RAW_TYPES = ("application/dicom", "application/octet-stream")
MULTIPART = "multipart/form-data"
#: room for multipart boundaries and part headers on top of the file limit
MULTIPART_OVERHEAD = 64 * 1024
#: the pause allowed between two chunks (s) when the app carries no settings (the
#: settings' own default, SHARPCXR_UPLOAD_IDLE_TIMEOUT_S)
DEFAULT_IDLE_TIMEOUT_S = 30.0


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def upload_idle_timeout_s(request: Request) -> float:
    """The app's ``upload_idle_timeout_s`` (s), or :data:`DEFAULT_IDLE_TIMEOUT_S`."""
    runtime = getattr(request.app.state, "runtime", None)
    value = getattr(getattr(runtime, "settings", None), "upload_idle_timeout_s", None)
    return float(value) if isinstance(value, int | float) else DEFAULT_IDLE_TIMEOUT_S


async def stream_with_idle_timeout(
    request: Request, idle_timeout_s: float | None = None
) -> AsyncGenerator[bytes, None]:
    """``request.stream()``, raising :class:`UploadTimeoutError` when a chunk takes longer
    than ``idle_timeout_s`` (default: the app's setting) to arrive after the previous one.

    For any body reader (the STOW-RS multipart parser too). :class:`ClientDisconnect`
    passes through, as from ``request.stream()``. A reader that stops early should close
    it (``contextlib.aclosing``), as :func:`read_limited` does.
    """
    idle_s = upload_idle_timeout_s(request) if idle_timeout_s is None else idle_timeout_s
    stream = request.stream()
    try:
        while True:
            try:
                async with asyncio.timeout(idle_s):  # no task per chunk, unlike wait_for
                    chunk = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                error = UploadTimeoutError(idle_s)
                # The rest of the body will not be read: the connection cannot serve another
                # request, so the answer closes it (uvicorn closes after `Connection: close`).
                error.headers = {"Connection": "close"}
                raise error from None
            yield chunk
    finally:
        await stream.aclose()


async def read_limited(
    request: Request, limit: int, limit_mb: float, idle_timeout_s: float | None = None
) -> bytes:
    """The whole body, or :class:`PayloadTooLargeError` as soon as it exceeds ``limit`` bytes,
    or :class:`UploadTimeoutError` when it pauses longer than ``idle_timeout_s`` (default:
    the app's ``upload_idle_timeout_s``)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(limit_mb)
    chunks: list[bytes] = []
    size = 0
    try:
        async with aclosing(stream_with_idle_timeout(request, idle_timeout_s)) as body:
            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(limit_mb)
                chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequestError(
            "the client closed the connection before the upload finished"
        ) from None
    return b"".join(chunks)


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def read_dicom_upload(
    request: Request, limit_mb: float, idle_timeout_s: float | None = None
) -> bytes:
    """The DICOM bytes of a ``/v1/predict``, ``/v1/compare`` or ``/v1/display`` request
    (``idle_timeout_s``: see :func:`read_limited`)."""
    kind = media_type(request)
    limit = int(limit_mb * 1024 * 1024)
    if kind in RAW_TYPES:
        body = await read_limited(request, limit, limit_mb, idle_timeout_s)
    elif kind == MULTIPART:
        raw = await read_limited(request, limit + MULTIPART_OVERHEAD, limit_mb, idle_timeout_s)
        parser = MultiPartParser(request.headers, _once(raw), max_files=1, max_fields=8)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise BadRequestError(f"malformed multipart body: {exc.message}") from None
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise BadRequestError(
                "multipart/form-data body without a file in field `file`; "
                "send the DICOM as -F file=@image.dcm"
            )
        body = await part.read()
        await form.close()
        if len(body) > limit:
            raise PayloadTooLargeError(limit_mb)
    else:
        raise UnsupportedMediaTypeError(kind)
    if not body:
        raise BadRequestError("the request body is empty; send a DICOM file")
    return body
