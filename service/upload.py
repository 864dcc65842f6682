"""Reading the uploaded DICOM: media type check, size limit enforced while streaming.

Accepted bodies (DESIGN): the raw Part 10 file with ``Content-Type: application/dicom``
(``application/octet-stream`` is accepted too, as many PACS clients send it), or
``multipart/form-data`` with the file in field ``file``. A declared ``Content-Length``
over the limit is refused before reading; otherwise the body is counted as it arrives and
refused as soon as it passes the limit, so an oversized upload never sits in memory.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from service.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError

RAW_TYPES = ("application/dicom", "application/octet-stream")
MULTIPART = "multipart/form-data"
#: room for multipart boundaries and part headers on top of the file limit
MULTIPART_OVERHEAD = 64 * 1024


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_limited(request: Request, limit: int, limit_mb: float) -> bytes:
    """The whole body, or :class:`PayloadTooLargeError` as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(limit_mb)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
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


async def read_dicom_upload(request: Request, limit_mb: float) -> bytes:
    """The DICOM bytes of a ``/v1/predict`` or ``/v1/compare`` request."""
    kind = media_type(request)
    limit = int(limit_mb * 1024 * 1024)
    if kind in RAW_TYPES:
        body = await read_limited(request, limit, limit_mb)
    elif kind == MULTIPART:
        raw = await read_limited(request, limit + MULTIPART_OVERHEAD, limit_mb)
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
