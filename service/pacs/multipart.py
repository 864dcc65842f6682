"""Streamed ``multipart/related`` parsing for STOW-RS request bodies (RFC 2046, RFC 2387).

Framework-independent: :func:`iter_parts` reads any async iterator of body chunks (such as
Starlette's ``request.stream()``), split anywhere, and yields each :class:`Part` once its
closing delimiter arrives. A part that fails alone (``oversized``, ``truncated``,
``malformed``) comes with an ``error`` and no data, and parsing goes on; what spoils the
whole request raises a :class:`~service.errors.ServiceError`: no opening boundary or no
parts (400), more than ``max_total_bytes`` of body (413).

Memory: a part sits in one buffer of at most ``max_part_bytes`` + one chunk + the
delimiter; an oversized part, the preamble and the epilogue are scanned and dropped as
they arrive. ``bytearray.find`` resumes where the last search stopped, so each byte is
looked at about once (100 MB in 64 KiB chunks: ~0.1 s). Messages never quote header
values, which may carry patient data.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Literal

from service.errors import (
    BadRequestError,
    PayloadTooLargeError,
    ServiceError,
    UnsupportedMediaTypeError,
)

#: the only root media type accepted in ``multipart/related; type=...``
DICOM_MEDIA_TYPE = "application/dicom"
#: a part's header block (field lines up to the blank line) may not exceed this
MAX_HEADER_BYTES = 16 * 1024
#: transport padding (spaces, tabs) allowed after a boundary, before its CRLF
MAX_PADDING = 1024

PartError = Literal["oversized", "truncated", "malformed"]

_MIB = 1024 * 1024
_CRLF = b"\r\n"
_LWSP = b" \t"
# one ``; name=value`` parameter: a token name, a quoted-string or a bare value
_PARAM = re.compile(r';\s*([^\s;=]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_QUOTED_PAIR = re.compile(r"\\(.)")
# RFC 2046 bchars, not ending in a space. RFC 2046 allows at most 70 of them, but Orthanc
# 1.10's DICOMweb client sends 73 (two UUIDs joined by "-"), so be liberal up to 200.
MAX_BOUNDARY = 200
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,199}[0-9A-Za-z'()+_,\-./:=?]")


class BadMultipartError(BadRequestError):
    """The body is not a usable ``multipart/related`` message (400)."""

    code = "bad_multipart"
    http_status = 400


class RelatedMediaTypeError(UnsupportedMediaTypeError):
    """The request is not ``multipart/related; type="application/dicom"`` (415)."""

    def __init__(self, message: str) -> None:  # the parent's message is for /v1 uploads
        ServiceError.__init__(self, message)


class RequestTooLargeError(PayloadTooLargeError):
    """The STOW-RS body, all parts together, exceeds its limit (413)."""

    def __init__(self, limit_bytes: int) -> None:
        ServiceError.__init__(
            self,
            f"the STOW-RS request exceeds the limit of {limit_bytes / _MIB:g} MB for all "
            "its parts together (SHARPCXR_STOW_MAX_REQUEST_MB); send the instances in "
            "several smaller requests",
        )


@dataclass(frozen=True, slots=True)
class RelatedType:
    """The parsed ``Content-Type`` of a STOW-RS request."""

    boundary: str
    type: str  # the root media type, lower-case: always DICOM_MEDIA_TYPE
    start: str | None = None
    params: dict[str, str] = field(default_factory=dict)  # every parameter, names lower-case


def _params(rest: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for match in _PARAM.finditer(rest):
        name, value = match.group(1).lower(), match.group(2).strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
        params.setdefault(name, value)
    return params


def parse_related_content_type(content_type: str | None) -> RelatedType:
    """Parse ``multipart/related; type="application/dicom"; boundary=...``.

    Names and the media types are case-insensitive; values may be quoted or not;
    ``start`` is optional. Raises :class:`RelatedMediaTypeError` (415) for another media
    type or root ``type``, :class:`BadMultipartError` (400) for a missing or invalid
    boundary.
    """
    value = (content_type or "").strip()
    media, _, rest = value.partition(";")
    media = media.strip().lower()
    if media != "multipart/related":
        shown = media[:80] or "(none)"
        raise RelatedMediaTypeError(
            f"content type {shown!r} is not accepted for STOW-RS; send the instances as "
            f'`Content-Type: multipart/related; type="{DICOM_MEDIA_TYPE}"; boundary=...` '
            "with one DICOM Part 10 file per part"
        )
    params = _params(";" + rest)
    root = params.get("type", "").split(";")[0].strip().lower()
    if root != DICOM_MEDIA_TYPE:
        what = f"type {root[:80]!r}" if root else "no type parameter"
        raise RelatedMediaTypeError(
            f"multipart/related with {what} is not accepted: only "
            f'type="{DICOM_MEDIA_TYPE}" (Part 10 files) is supported, not '
            "application/dicom+json or application/dicom+xml with bulk data; send "
            f'`Content-Type: multipart/related; type="{DICOM_MEDIA_TYPE}"; boundary=...`'
        )
    boundary = params.get("boundary")
    if not boundary:
        raise BadMultipartError(
            "the multipart/related content type has no boundary parameter; add "
            "`boundary=<1 to 70 characters>` naming the delimiter used in the body"
        )
    if not _BOUNDARY.fullmatch(boundary):
        raise BadMultipartError(
            f"the multipart boundary ({len(boundary)} characters) is not valid: RFC 2046 "
            "allows 1 to 70 letters, digits, spaces (not last) and '()+_,-./:=? (this "
            f"service takes up to {MAX_BOUNDARY}); choose another boundary"
        )
    return RelatedType(boundary=boundary, type=root, start=params.get("start"), params=params)


@dataclass(frozen=True, slots=True)
class Part:
    """One body part: ``data``, or ``error`` and a ``detail`` sentence. ``headers``: lower-case
    names; ``content_type``: the bare media type, lower-case (None: no header); ``size``:
    content bytes seen, failed parts included."""

    index: int
    headers: dict[str, str] = field(repr=False)
    content_type: str | None
    data: bytes | None = field(default=None, repr=False)
    error: PartError | None = None
    detail: str = ""
    size: int = 0


def _parse_headers(block: bytes) -> dict[str, str] | None:
    """Field lines -> dict (lower-case names; folded lines joined); None if malformed."""
    headers: dict[str, str] = {}
    last: str | None = None
    for raw in block.decode("latin-1").split("\r\n"):
        if not raw:
            continue
        if raw[0] in " \t" and last is not None:  # obsolete line folding
            headers[last] = f"{headers[last]} {raw.strip()}"
            continue
        name, sep, value = raw.partition(":")
        name = name.strip().lower()
        if not sep or not name or " " in name:
            return None
        headers[name] = value.strip()
        last = name
    return headers


def _size(n: int) -> str:
    return f"{n / _MIB:.1f} MB" if n >= _MIB else f"{n:,} bytes"


# delimiter tails: "close" (--), "next" (padding CRLF), "none" (not a delimiter), "more"
_Tail = Literal["close", "next", "none", "more"]


class MultipartParser:
    """The push parser behind :func:`iter_parts`: ``feed`` chunks, then ``finish``; exhaust
    each iterator they return before the next call. ``buffered``: bytes held now."""

    def __init__(self, boundary: str, *, max_part_bytes: int, max_total_bytes: int) -> None:
        if max_part_bytes < 1 or max_total_bytes < 1:
            raise ValueError("the part and total limits must be positive")
        self._delim = b"\r\n--" + boundary.encode("latin-1")
        self._max_part = max_part_bytes
        self._max_total = max_total_bytes
        # a virtual CRLF in front makes a boundary at the very start a plain delimiter
        self._buf = bytearray(_CRLF)
        self._state: Literal["preamble", "headers", "body", "discard", "epilogue"]
        self._state = "preamble"
        self._scan = 0  # where the next delimiter search starts
        self._total = 0
        self._index = 0
        self._headers: dict[str, str] = {}
        self._discarded = 0
        self._declared: int | None = None
        self._failure: tuple[PartError, str] | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, chunk: bytes) -> Iterator[Part]:
        self._total += len(chunk)
        if self._total > self._max_total:
            raise RequestTooLargeError(self._max_total)
        if self._state != "epilogue":
            self._buf += chunk
            yield from self._run(eof=False)

    def finish(self) -> Iterator[Part]:
        yield from self._run(eof=True)
        if self._state == "preamble":
            raise BadMultipartError(
                "the body holds no opening multipart boundary: expected a line "
                "`--<boundary>` with the boundary of the Content-Type header; check that "
                "the header and the body use the same boundary"
            )
        if self._state in ("body", "discard") or (self._state == "headers" and self._buf):
            if self._state == "headers":
                self._headers = {}
            detail = "the body ended before its closing boundary (the upload was cut short)"
            yield self._part(None, "truncated", detail, self._discarded + len(self._buf))
            self._state = "epilogue"
        if self._index == 0:
            raise BadMultipartError(
                "the multipart body holds no parts; send one DICOM Part 10 file per part, "
                "each after a `--<boundary>` line and its part headers"
            )

    def _tail(self, pos: int, eof: bool) -> tuple[_Tail, int]:
        """What follows a delimiter ending at ``pos``, and where that ends."""
        buf, end = self._buf, len(self._buf)
        if buf[pos : pos + 2] == b"--":
            return "close", pos + 2
        j = pos
        while j < end and j - pos <= MAX_PADDING and buf[j] in _LWSP:
            j += 1
        if buf[j : j + 2] == _CRLF:
            return "next", j + 2
        if j - pos <= MAX_PADDING and (j == end or (j == end - 1 and buf[j] in b"\r-")):
            # a body that ends right after a delimiter lacks only the final "--"
            return ("close", end) if eof else ("more", pos)
        return "none", pos

    def _find_delimiter(self, eof: bool) -> tuple[int, _Tail, int]:
        """The next real delimiter: (start, tail, end), or start -1 with ``_scan`` set
        to where one may still begin (every byte before it is content)."""
        while True:
            idx = self._buf.find(self._delim, self._scan)
            if idx < 0:
                self._scan = max(0, len(self._buf) - len(self._delim) + 1)
                return -1, "none", 0
            kind, end = self._tail(idx + len(self._delim), eof)
            if kind == "more":
                self._scan = idx
                return -1, "more", 0
            if kind != "none":
                return idx, kind, end
            self._scan = idx + 1

    def _consume(self, end: int) -> None:
        del self._buf[:end]
        self._scan = 0

    def _run(self, eof: bool) -> Iterator[Part]:
        while True:
            if self._state == "epilogue":  # ignored
                self._buf.clear()
                return
            if self._state in ("body", "discard"):
                part = self._body(eof)
                if part is None:
                    return
                yield part
            elif not (self._preamble(eof) if self._state == "preamble" else self._top(eof)):
                return

    def _preamble(self, eof: bool) -> bool:
        idx, kind, end = self._find_delimiter(eof)
        if idx < 0:  # discard the preamble up to a possible delimiter start
            self._consume(self._scan)
            return False
        self._consume(end)
        self._state = "epilogue" if kind == "close" else "headers"
        return True

    def _top(self, eof: bool) -> bool:
        """The header block of a part: on to its body, or False to wait for more bytes."""
        buf = self._buf
        if len(buf) < len(self._delim) and self._delim.startswith(buf) and not eof:
            return False  # maybe an empty part (no headers, no content)
        limit = MAX_HEADER_BYTES + 4
        idx = buf.find(b"\r\n\r\n", self._scan, limit)
        resume = max(0, self._scan - len(self._delim))  # searched up to _scan last time
        if buf.startswith(self._delim):  # an empty part: no headers, no content
            self._start_part({}, 0)
        elif buf.startswith(_CRLF):  # no headers
            self._start_part({}, 2)
        elif buf.find(self._delim, resume, limit if idx < 0 else idx + 2) >= 0:
            self._start_part({}, 0)  # the part ends before its header block does
            self._fail("malformed", "its header lines are not followed by a blank line")
        elif idx >= 0:
            headers = _parse_headers(bytes(buf[:idx]))
            self._start_part(headers or {}, idx + 4)
            if headers is None:
                self._fail("malformed", "its header block is not a list of `Name: value` lines")
        elif len(buf) < limit:
            self._scan = max(0, len(buf) - 3)
            return False  # wait; at the end, finish() reports the part as truncated
        else:
            self._start_part({}, 0)
            self._fail("malformed", f"its header block exceeds {MAX_HEADER_BYTES:,} bytes")
        return True

    def _start_part(self, headers: dict[str, str], end: int) -> None:
        self._consume(end)
        self._headers = headers
        self._state = "body"
        self._discarded = 0
        self._failure = None
        self._declared = None
        length = headers.get("content-length")
        # isascii: str.isdigit() is also True for "³" or "²", which int() refuses (a 500)
        if length is not None and not (length.isascii() and length.isdigit()):
            self._fail("malformed", "its Content-Length is not a number of bytes")
        elif length is not None:
            self._declared = int(length)
            if self._declared > self._max_part:
                self._fail("oversized", "")

    def _fail(self, error: PartError, detail: str) -> None:
        """Discard the rest of the part, reporting ``error`` at its closing delimiter."""
        if self._failure is None:
            self._failure = (error, detail)
        self._state = "discard"

    def _body(self, eof: bool) -> Part | None:
        idx, kind, end = self._find_delimiter(eof)
        if idx < 0:
            if self._state == "body" and self._scan > self._max_part:
                self._fail("oversized", "")
            if self._state == "discard":
                self._discarded += self._scan
                self._consume(self._scan)
            return None
        size = self._discarded + idx
        if self._state == "body" and idx > self._max_part:
            self._fail("oversized", "")
        elif self._state == "body" and self._declared not in (None, idx):
            self._fail(
                "malformed", f"it holds {idx:,} bytes, its Content-Length says {self._declared:,}"
            )
        if self._failure is None:
            with memoryview(self._buf) as view, view[:idx] as content:
                part = self._part(bytes(content), None, "", size)
        else:
            error, detail = self._failure
            limit = _size(self._max_part)
            detail = detail or f"it holds {_size(size)}, over the limit of {limit} per part"
            part = self._part(None, error, detail, size)
        self._consume(end)
        self._state = "epilogue" if kind == "close" else "headers"
        return part

    def _part(self, data: bytes | None, error: PartError | None, detail: str, size: int) -> Part:
        ctype = self._headers.get("content-type")
        self._index += 1
        return Part(
            index=self._index - 1,
            headers=self._headers,
            content_type=ctype.split(";")[0].strip().lower() if ctype else None,
            data=data,
            error=error,
            detail=detail,
            size=size,
        )


async def iter_parts(
    chunks: AsyncIterator[bytes],
    boundary: str,
    *,
    max_part_bytes: int,
    max_total_bytes: int,
) -> AsyncIterator[Part]:
    """The parts of the body in ``chunks``; a ``truncated`` part is always the last.

    Raises :class:`BadMultipartError` (no opening boundary, no parts) and, as soon as more
    than ``max_total_bytes`` arrived, :class:`RequestTooLargeError` (413).
    """
    parser = MultipartParser(
        boundary, max_part_bytes=max_part_bytes, max_total_bytes=max_total_bytes
    )
    async for chunk in chunks:
        for part in parser.feed(chunk):
            yield part
    for part in parser.finish():
        yield part
