"""service.pacs.multipart: the streamed multipart/related parser and its content type."""

from __future__ import annotations

import asyncio
import email.policy
import io
import random
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from email.encoders import encode_7or8bit
from email.generator import BytesGenerator
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from typing import Any

import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient

from service.errors import PayloadTooLargeError, ServiceError, UnsupportedMediaTypeError
from service.pacs.multipart import (
    MAX_HEADER_BYTES,
    BadMultipartError,
    MultipartParser,
    Part,
    RelatedMediaTypeError,
    RequestTooLargeError,
    iter_parts,
    parse_related_content_type,
)
from tests.conftest import make_dicom, pydicom_file

B = "sharp-boundary.42"
DICOM_CT = "application/dicom"
BIG = 1 << 40


def encode(
    parts: Sequence[tuple[dict[str, str] | None, bytes]],
    boundary: str = B,
    *,
    preamble: bytes = b"",
    epilogue: bytes = b"",
    padding: bytes = b"",
    close: bool = True,
) -> bytes:
    """A multipart body written by hand; headers None: no header block at all."""
    out = [preamble + b"\r\n" if preamble else b""]
    for headers, data in parts:
        out.append(b"--" + boundary.encode() + padding + b"\r\n")
        if headers is not None:
            out.append(b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n")
        out.append(data + b"\r\n")
    if close:
        out.append(b"--" + boundary.encode() + b"--" + padding)
        if epilogue:
            out.append(b"\r\n" + epilogue)
    return b"".join(out)


async def stream(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def parse(
    body: bytes | Iterable[bytes],
    boundary: str = B,
    *,
    chunk: int | None = None,
    max_part_bytes: int = BIG,
    max_total_bytes: int = BIG,
) -> list[Part]:
    """Parse ``body`` (bytes, cut into ``chunk``-sized pieces; or the chunks themselves)."""
    if isinstance(body, bytes):
        size = chunk or max(1, len(body))
        body = [body[i : i + size] for i in range(0, len(body), size)]

    async def run() -> list[Part]:
        parts = iter_parts(stream(body), boundary, max_part_bytes=max_part_bytes,
                           max_total_bytes=max_total_bytes)  # fmt: skip
        return [part async for part in parts]

    return asyncio.run(run())


def split(body: bytes, rng: random.Random, most: int) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(body)), k=min(len(body) - 1, rng.randint(1, most))))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


def summary(parts: Sequence[Part]) -> list[tuple[Any, ...]]:
    return [(p.index, p.headers, p.content_type, p.data, p.error, p.size) for p in parts]


@pytest.fixture(scope="module")
def dicoms() -> list[bytes]:
    small = make_dicom(np.arange(64 * 48, dtype=np.uint16).reshape(64, 48))
    return [pydicom_file("RG1_UNCR.dcm")[:300_000], small, pydicom_file("RG1_J2KR.dcm")[:200_000]]


ORTHANC_BOUNDARY = "fd7beb68-d826-4e5b-bbca-7c9dcd2181ee-fd7beb68-d826-4e5b-bbca-7c9dcd2181ee"


@pytest.mark.parametrize(
    ("header", "boundary", "start"),
    [
        (f'multipart/related; type="application/dicom"; boundary="{B}"', B, None),
        (f"multipart/related; type=application/dicom; boundary={B}", B, None),
        (f'Multipart/Related ;BOUNDARY = "{B}" ; Type="Application/DICOM"', B, None),
        ('multipart/related; boundary="a b=c"; type="application/dicom"; start="<x;y=\\"z\\">"',
         "a b=c", '<x;y="z">'),
        ('multipart/related; type="application/dicom; transfer-syntax=*"; boundary=x', "x", None),
        ('multipart/related; type="application/dicom"; boundary="' + "b" * 70 + '"', "b" * 70,
         None),
        # Orthanc 1.10 sends 73 characters, over RFC 2046's 70: accepted
        ("multipart/related; type=\"application/dicom\"; boundary=" + ORTHANC_BOUNDARY,
         ORTHANC_BOUNDARY, None),
    ],
)  # fmt: skip
def test_related_content_type_variants(header: str, boundary: str, start: str | None) -> None:
    related = parse_related_content_type(header)
    assert (related.boundary, related.type, related.start) == (boundary, DICOM_CT, start)


@pytest.mark.parametrize(
    ("header", "error", "needle"),
    [
        (None, RelatedMediaTypeError, "multipart/related"),
        ("application/dicom", RelatedMediaTypeError, "multipart/related"),
        ("multipart/form-data; boundary=x", RelatedMediaTypeError, "multipart/related"),
        ("multipart/related; boundary=x", RelatedMediaTypeError, "no type parameter"),
        ('multipart/related; type="application/dicom+json"; boundary=x', RelatedMediaTypeError,
         "only type=\"application/dicom\""),
        ('multipart/related; type="application/dicom+xml"; boundary=x', RelatedMediaTypeError,
         "application/dicom+xml with bulk data"),
        ('multipart/related; type="application/dicom"', BadMultipartError, "boundary="),
        ('multipart/related; type="application/dicom"; boundary=""', BadMultipartError,
         "boundary="),
        ('multipart/related; type="application/dicom"; boundary="' + "b" * 201 + '"',
         BadMultipartError, "1 to 70"),
        ('multipart/related; type="application/dicom"; boundary="ends in space "',
         BadMultipartError, "not last"),
    ],
)  # fmt: skip
def test_related_content_type_refusals(
    header: str | None, error: type[ServiceError], needle: str
) -> None:
    with pytest.raises(error) as info:
        parse_related_content_type(header)
    exc = info.value
    assert needle in exc.message
    assert "send" in exc.message or "choose" in exc.message or "add" in exc.message  # a fix
    if error is RelatedMediaTypeError:
        assert isinstance(exc, UnsupportedMediaTypeError)
        assert (exc.code, exc.http_status) == ("unsupported_media_type", 415)
    else:
        assert (exc.code, exc.http_status) == ("bad_multipart", 400)


def test_dicom_parts_and_a_png_among_them(dicoms: list[bytes]) -> None:
    png = b"\x89PNG\r\n\x1a\nrest"
    headers = {"Content-Type": DICOM_CT, "Content-Location": "urn:part:0"}
    body = encode([(headers, dicoms[0]), ({"content-type": "image/png"}, png),
                   ({"CONTENT-TYPE": "Application/DICOM"}, dicoms[1])])  # fmt: skip
    parts = parse(body, chunk=65536)
    assert [p.data for p in parts] == [dicoms[0], png, dicoms[1]]
    assert [p.index for p in parts] == [0, 1, 2]
    assert parts[0].headers == {"content-type": DICOM_CT, "content-location": "urn:part:0"}
    assert [p.content_type for p in parts] == [DICOM_CT, "image/png", DICOM_CT]
    assert all(p.error is None and p.size == len(p.data or b"") for p in parts)


def test_dicomweb_client_encoding(dicoms: list[bytes]) -> None:
    """The body dicomweb-client's STOW-RS sends (it starts with CRLF before the boundary)."""
    ctype = f'multipart/related; type="application/dicom"; boundary="{B}"'
    body = DICOMwebClient._encode_multipart_message(dicoms, ctype)
    assert body.startswith(b"\r\n--")
    related = parse_related_content_type(ctype)
    parts = parse(body, related.boundary, chunk=8191)
    assert [p.data for p in parts] == dicoms
    assert {p.content_type for p in parts} == {DICOM_CT}


def test_email_package_encoding() -> None:
    """Python's email package as an independent encoder: preamble, epilogue, CTE headers."""
    payloads = [b"line one\r\nline two", b"x" * 5000 + b"\r\nend", b"", b"third\r\n"]
    message = MIMEMultipart("related", type=DICOM_CT, start="<p0>")
    message.preamble = "This is a multi-part message in MIME format."
    message.epilogue = "the end"
    for i, payload in enumerate(payloads):
        part = MIMEApplication(payload, "dicom", _encoder=encode_7or8bit)
        part["Content-ID"] = f"<p{i}>"
        message.attach(part)
    out = io.BytesIO()
    BytesGenerator(out, policy=email.policy.HTTP).flatten(message)  # type: ignore[arg-type]
    body = out.getvalue().split(b"\r\n\r\n", 1)[1]  # drop the message's own headers
    related = parse_related_content_type(message["Content-Type"])
    assert related.start == "<p0>"
    for chunk in (1, 7, 1 << 20):
        parts = parse(body, related.boundary, chunk=chunk)
        assert [p.data for p in parts] == payloads
        assert [p.headers["content-id"] for p in parts] == [f"<p{i}>" for i in range(4)]
        assert parts[0].headers["content-transfer-encoding"] == "7bit"


def tricky_body() -> tuple[bytes, list[bytes]]:
    """Preamble, padding, epilogue and data that looks like boundaries, but is not."""
    datas = [
        b"\r\n--" + B.encode() + b"X not a delimiter\r\n--" + B.encode() + b"\t-x",
        b"--" + B.encode() + b"\r\n (no CRLF before it: content)",
        b"ends in CR LF\r\n\r\n",
        b"\r",
        b"",
        bytes(range(256)) * 40,
    ]
    headers = {"Content-Type": DICOM_CT}
    body = encode(
        [(headers, d) for d in datas],
        preamble=b"preamble with --" + B.encode() + b" inside\r\n--not-it",
        epilogue=b"epilogue\r\n--" + B.encode() + b"\r\nignored",
        padding=b" \t ",
    )
    return body, datas


def test_preamble_epilogue_padding_and_false_delimiters_in_one_byte_chunks() -> None:
    body, datas = tricky_body()
    assert [p.data for p in parse(body)] == datas
    assert summary(parse(body, chunk=1)) == summary(parse(body))


def test_random_chunk_splits(dicoms: list[bytes]) -> None:
    tricky, _ = tricky_body()
    bodies = [
        tricky,
        encode([({"Content-Type": DICOM_CT}, d) for d in dicoms], preamble=b"p", epilogue=b"e"),
        encode([({"Content-Type": DICOM_CT}, dicoms[1]), ({"X": "y"}, b"")], close=False),
    ]
    rng = random.Random(20240917)
    for body in bodies:
        expected = summary(parse(body))
        for _ in range(150):
            assert summary(parse(split(body, rng, 40))) == expected


def test_random_bodies_with_boundary_like_content() -> None:
    """Seeded random parts made of CR, LF, dashes and boundary prefixes round-trip under
    random chunking (a delimiter can never occur in them: each ends in one extra byte)."""
    rng = random.Random(7)
    atoms = [b"\r", b"\n", b"-", b"--", b"\r\n", b"x", b"\r\n--", B[:5].encode(), B.encode()]
    for _ in range(200):
        datas = [
            b"".join(rng.choices(atoms, k=rng.randint(0, 12))) + bytes([rng.choice(b"X\r\n-")])
            for _ in range(rng.randint(1, 4))
        ]
        datas = [d for d in datas if f"\r\n--{B}".encode() not in b"\r\n" + d + b"\r\n--"]
        if not datas:
            continue
        body = encode([({}, d) for d in datas], preamble=rng.choice([b"", b"--", b"\r\n"]))
        assert [p.data for p in parse(split(body, rng, 8))] == datas


def test_part_without_headers_empty_part_and_folded_header() -> None:
    # an empty part has no blank line: "--B\r\n" is followed by the next delimiter at once
    folded = {"Content-Type": "application/dicom;\r\n transfer-syntax=1.2"}
    body = encode([(None, b""), ({}, b"no headers"), (folded, b"x")])
    assert body.startswith(f"--{B}\r\n\r\n--{B}\r\n\r\nno headers".encode())
    for chunk in (None, 1, 3):
        parts = parse(body, chunk=chunk)
        expected = [(b"", None), (b"no headers", None), (b"x", DICOM_CT)]
        assert [(p.data, p.content_type) for p in parts] == expected
        assert parts[2].headers["content-type"] == "application/dicom; transfer-syntax=1.2"


def test_missing_close_delimiter_dashes_are_tolerated() -> None:
    for ending in (b"", b"\r\n"):
        body = encode([({}, b"one"), ({}, b"two")], close=False)[:-2] + ending
        body = body + b"--" + B.encode() if ending else body + b"\r\n--" + B.encode()
        assert [p.data for p in parse(body, chunk=2)] == [b"one", b"two"]


def test_oversized_middle_part_is_skipped(dicoms: list[bytes]) -> None:
    limit = 100_000
    big = b"\x00\r\n-" * 100_000  # 400 kB, full of near-delimiters
    body = encode([({"Content-Type": DICOM_CT}, d) for d in (dicoms[1], big, dicoms[1])])
    for chunk in (1000, 65536, None):
        parts = parse(body, chunk=chunk, max_part_bytes=limit)
        assert [p.data for p in parts] == [dicoms[1], None, dicoms[1]]
        bad = parts[1]
        assert (bad.error, bad.size, bad.content_type) == ("oversized", len(big), DICOM_CT)
        assert bad.detail == "it holds 400,000 bytes, over the limit of 100,000 bytes per part"


def test_oversized_part_memory_is_bounded() -> None:
    """A 32 MB part with a 1 MB limit: the buffer never holds more than limit + chunk +
    delimiter, and the traced peak stays far below the part's size."""
    limit, chunk_size, part_size = 1 << 20, 65536, 32 << 20
    block = bytes(range(256)) * (chunk_size // 256)

    def body() -> Iterator[bytes]:
        yield f"--{B}\r\nContent-Type: {DICOM_CT}\r\n\r\n".encode()
        for _ in range(part_size // chunk_size):
            yield block
        yield f"\r\n--{B}\r\n\r\nsmall\r\n--{B}--".encode()

    parser = MultipartParser(B, max_part_bytes=limit, max_total_bytes=BIG)
    parts: list[Part] = []
    largest = 0
    tracemalloc.start()
    try:
        for piece in body():
            parts.extend(parser.feed(piece))
            largest = max(largest, parser.buffered)
        parts.extend(parser.finish())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(p.error, p.data) for p in parts] == [("oversized", None), (None, b"small")]
    assert parts[0].size == part_size
    assert largest <= limit + chunk_size + len(B) + 4
    assert peak < 4 * limit  # vs. 32 MB if the part were buffered


def test_declared_content_length_over_the_limit_is_discarded_at_once() -> None:
    body = encode([({"Content-Length": "5000"}, b"y" * 5000), ({}, b"ok")])
    parser = MultipartParser(B, max_part_bytes=1000, max_total_bytes=BIG)
    head = body.index(b"\r\n\r\n") + 4
    assert list(parser.feed(body[: head + 10])) == []
    assert parser.buffered < 100  # nothing of the part kept: it is known to be too big
    parts = [*parser.feed(body[head + 10 :]), *parser.finish()]
    assert [(p.error, p.data) for p in parts] == [("oversized", None), (None, b"ok")]


def test_content_length_mismatch_is_malformed() -> None:
    for length, needle in (("3", "Content-Length says 3"), ("lots", "not a number")):
        parts = parse(encode([({"Content-Length": length}, b"abcd"), ({}, b"next")]))
        assert [(p.error, p.data) for p in parts] == [("malformed", None), (None, b"next")]
        assert needle in parts[0].detail


def test_malformed_header_blocks_do_not_stop_the_request() -> None:
    no_colon = f"--{B}\r\nnot a header line\r\n\r\nx\r\n".encode()
    no_blank_line = f"--{B}\r\nContent-Type: {DICOM_CT}\r\n".encode()
    huge = f"--{B}\r\nX-Big: {'h' * MAX_HEADER_BYTES}\r\n\r\nx\r\n".encode()
    good = f"--{B}\r\n\r\ngood\r\n".encode()
    body = no_colon + good + no_blank_line + good + huge + good + f"--{B}--".encode()
    for chunk in (None, 1000):
        parts = parse(body, chunk=chunk)
        assert [(p.error, p.data) for p in parts] == [("malformed", None), (None, b"good")] * 3
        assert "blank line" in parts[2].detail
        assert f"{MAX_HEADER_BYTES:,}" in parts[4].detail


def test_truncated_final_part(dicoms: list[bytes]) -> None:
    full = encode([({"Content-Type": DICOM_CT}, d) for d in (dicoms[1], dicoms[1][::-1])])
    cut = full[: len(full) - 1000]
    for chunk in (None, 1, 4096):
        parts = parse(cut, chunk=chunk)
        assert [p.data for p in parts] == [dicoms[1], None]
        assert (parts[1].index, parts[1].error, parts[1].content_type) == (1, "truncated", DICOM_CT)
        assert parts[1].size == len(dicoms[1]) - 1000 + len(f"\r\n--{B}--")
        assert "cut short" in parts[1].detail


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (encode([({}, b"one")], close=False) + f"--{B}\r\nContent-Ty".encode(),
         [(None, b"one", 3), ("truncated", None, 10)]),  # inside the header block
        (f"--{B}\r\n\r\n".encode() + b"z" * 5000, [("truncated", None, 5000)]),  # and too big
    ],
)  # fmt: skip
def test_truncated_elsewhere(body: bytes, expected: list[tuple[Any, ...]]) -> None:
    assert [
        (p.error, p.data, p.size) for p in parse(body, chunk=3, max_part_bytes=1000)
    ] == expected


def test_total_limit_is_413_and_stops_reading() -> None:
    consumed = 0

    def chunks() -> Iterator[bytes]:
        nonlocal consumed
        yield f"--{B}\r\n\r\n".encode()
        for _ in range(1000):
            consumed += 1
            yield b"x" * 1024

    with pytest.raises(RequestTooLargeError) as info:
        parse(chunks(), max_total_bytes=100 * 1024)
    exc = info.value
    assert isinstance(exc, PayloadTooLargeError)
    assert (exc.code, exc.http_status) == ("payload_too_large", 413)
    assert "SHARPCXR_STOW_MAX_REQUEST_MB" in exc.message
    assert consumed <= 101
    with pytest.raises(RequestTooLargeError):  # the epilogue counts too
        parse(encode([({}, b"one")], epilogue=b"e" * 5000), chunk=100, max_total_bytes=1000)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "no opening multipart boundary"),
        (b"just some bytes, no boundary at all" * 10, "no opening multipart boundary"),
        (b"--other-boundary\r\n\r\nx\r\n--other-boundary--", "no opening multipart boundary"),
        (f"--{B}--\r\n".encode(), "holds no parts"),
        (f"--{B}\r\n".encode(), "holds no parts"),
        (f"preamble\r\n--{B}--".encode(), "holds no parts"),
    ],
)
def test_bodies_without_parts_are_400(body: bytes, needle: str) -> None:
    for chunk in (None, 1):
        with pytest.raises(BadMultipartError) as info:
            parse(body, chunk=chunk)
        assert needle in info.value.message
        assert (info.value.code, info.value.http_status) == ("bad_multipart", 400)
        assert "send" in info.value.message or "check" in info.value.message


def test_preamble_is_not_buffered() -> None:
    parser = MultipartParser(B, max_part_bytes=BIG, max_total_bytes=BIG)
    for _ in range(100):
        assert list(parser.feed(b"preamble " * 1000)) == []
        assert parser.buffered < len(B) + 8


def test_parse_time_100_mb_in_64_kib_chunks() -> None:
    """Printed, not asserted: run with -s to see it (measured ~0.1 s)."""
    part = bytes(range(256)) * (10 * 4096)  # 10 MiB
    body = encode([({"Content-Type": DICOM_CT}, part)] * 10)
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    start = time.perf_counter()
    parts = parse(chunks)
    elapsed = time.perf_counter() - start
    assert all(p.data == part for p in parts) and len(parts) == 10
    print(f"\nparsed {len(body) / 1e6:.0f} MB in {len(chunks)} chunks: {elapsed * 1e3:.0f} ms")
