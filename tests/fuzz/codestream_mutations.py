"""Mutators inside the pixel data of the first frame (see :mod:`tests.fuzz.decoder_mutations`).

JPEG (baseline, extended, lossless): SOF height / width / precision / components /
sampling / kind, DHT and DQT fields, header segments removed, duplicated or mis-sized,
EOI / RST / SOS out of place, entropy-coded data cut. JPEG-LS: SOF55, SOS NEAR / ILV, an
LSE preset segment. JPEG 2000 and HTJ2K: SIZ (Xsiz, Ysiz, offsets, tile sizes, Csiz,
precision, sub-sampling), COD (levels, layers, progression, code blocks, style,
transform), SOT, QCD, EOC, tile data cut. RLE: the header's segment count and offsets, run
bytes. Deflate: the deflated stream's bytes, its end, and a zlib bomb.

A frame's item length follows the mutated codestream's size, so the DICOM structure stays
intact and the codec sees the damage.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable
from functools import lru_cache

from tests.fuzz.dicom_layout import (
    BYTES,
    U16,
    UNDEFINED,
    Element,
    Layout,
    item,
    layout,
    near,
    pack,
    put,
)


def _frame(data: bytes) -> tuple[Layout, Element] | None:
    """The first frame's fragment (the item after the offset table)."""
    found = layout(data)
    fragments = [f for f in found.fragments[1:] if f.length != UNDEFINED and f.length > 2]
    return (found, fragments[0]) if fragments else None


def _in_frame(data: bytes, mutate: Callable[[bytes], bytes | None]) -> bytes | None:
    """``mutate`` applied to the first frame; the item length follows the new size."""
    framed = _frame(data)
    if framed is None:
        return None
    _, fragment = framed
    old = data[fragment.value_at : fragment.end]
    new = mutate(old)
    if new is None:
        return None
    if len(new) % 2:
        new += b"\x00"
    return data[: fragment.start] + item(new) + data[fragment.end :]


def jpeg_segments(stream: bytes) -> list[tuple[int, int, int]]:
    """``(marker, offset, length)`` of each JPEG / JPEG-LS header segment up to SOS."""
    out: list[tuple[int, int, int]] = []
    at = 2
    while at + 4 <= len(stream) and stream[at] == 0xFF and len(out) < 200:
        marker = stream[at + 1]
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:
            at += 2
            continue
        length = int.from_bytes(stream[at + 2 : at + 4], "big")
        out.append((marker, at, length))
        if marker == 0xDA:
            break
        at += 2 + length
    return out


_SOF = {m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)}


def _segment_field(
    stream: bytes,
    rng: random.Random,
    markers: set[int],
    fields: list[tuple[int, int, tuple[int, ...]]],
) -> bytes | None:
    """Set one field (offset from the marker, size, values) of a segment in ``markers``."""
    segments = [s for s in jpeg_segments(stream) if s[0] in markers]
    if not segments:
        return None
    _, at, _ = rng.choice(segments)
    offset, size, table = rng.choice(fields)
    original = int.from_bytes(stream[at + offset : at + offset + size], "big")
    return put(stream, at + offset, pack(near(rng, original, table), size, little=False))


def jpeg_sof(data: bytes, rng: random.Random) -> bytes | None:
    """JPEG SOF: precision, height, width, component count, sampling, table, or its kind."""

    def mutate(stream: bytes) -> bytes | None:
        if rng.random() < 0.15:
            sof = [s for s in jpeg_segments(stream) if s[0] in _SOF]
            kind = rng.choice((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC7, 0xC9, 0xCB, 0xCF, 0xF7))
            return put(stream, sof[0][1] + 1, bytes([kind])) if sof else None
        fields = [
            (4, 1, (0, 1, 2, 7, 8, 12, 16, 17, 255)),
            (5, 2, U16),
            (7, 2, U16),
            (9, 1, (0, 2, 3, 4, 255)),
            (11, 1, (0x00, 0x12, 0x22, 0x44, 0xFF)),
            (12, 1, (0, 3, 4, 255)),
        ]
        return _segment_field(stream, rng, _SOF, fields)

    return _in_frame(data, mutate)


def jpeg_tables(data: bytes, rng: random.Random) -> bytes | None:
    """DHT code counts / class / id, DQT precision / id / values, or their lengths."""

    def mutate(stream: bytes) -> bytes | None:
        if rng.random() < 0.5:
            fields = [
                (4, 1, (0x00, 0x01, 0x10, 0x11, 0x04, 0x24, 0xFF)),
                (2, 2, U16),
                *[(5 + k, 1, (0, 1, 16, 255)) for k in range(16)],
                (21, 1, BYTES),
            ]
            return _segment_field(stream, rng, {0xC4}, fields)
        fields = [
            (4, 1, (0x00, 0x10, 0x04, 0x13, 0xFF)),
            (2, 2, U16),
            *[(5 + k, 1, (0, 1, 255)) for k in (0, 1, 10, 63)],
        ]
        return _segment_field(stream, rng, {0xDB}, fields)

    return _in_frame(data, mutate)


def jpeg_markers(data: bytes, rng: random.Random) -> bytes | None:
    """A header segment removed, duplicated or given a wrong length; EOI, RST or SOS out of
    place; the entropy-coded data cut short."""

    def mutate(stream: bytes) -> bytes | None:
        segments = jpeg_segments(stream)
        if not segments:
            return None
        _, at, length = rng.choice(segments)
        end = at + 2 + length
        op = rng.randrange(5)
        if op == 0:
            return stream[:at] + stream[end:]
        if op == 1:
            return stream[:end] + stream[at:end] + stream[end:]
        if op == 2:
            return put(stream, at + 2, pack(near(rng, length, U16), 2, little=False))
        if op == 3:
            extra = rng.choice((b"\xff\xd9", b"\xff\xd0", b"\xff\xda\x00\x02", b"\xff\xd8"))
            return stream[:at] + extra + stream[at:]
        sos_end = segments[-1][1] + 2 + segments[-1][2]
        return stream[: rng.randrange(sos_end, len(stream) + 1)] if sos_end < len(stream) else None

    return _in_frame(data, mutate)


def jpegls_header(data: bytes, rng: random.Random) -> bytes | None:
    """JPEG-LS SOF55 (precision, Y, X, components), SOS NEAR / ILV, or an LSE preset."""

    def mutate(stream: bytes) -> bytes | None:
        op = rng.randrange(3)
        if op == 0:
            fields = [
                (4, 1, (0, 1, 2, 8, 12, 16, 17, 255)),
                (5, 2, U16),
                (7, 2, U16),
                (9, 1, (0, 2, 3, 4, 255)),
                (11, 1, (0x00, 0x22, 0xFF)),
            ]
            return _segment_field(stream, rng, {0xF7}, fields)
        sos = [s for s in jpeg_segments(stream) if s[0] == 0xDA]
        if not sos:
            return None
        at = sos[0][1]
        if op == 1:
            near_at = at + 5 + 2 * stream[at + 4]
            return put(stream, near_at + rng.randrange(2), bytes([rng.choice((0, 1, 2, 3, 255))]))
        values = [rng.choice((0, 1, 2, 3, 255, 4095, 65535)) for _ in range(5)]
        lse = b"\xff\xf8\x00\x0d\x01" + struct.pack(">5H", *values)
        return stream[:at] + lse + stream[at:]

    return _in_frame(data, mutate)


def j2k_segments(stream: bytes) -> list[tuple[int, int, int]]:
    """``(marker, offset, length)`` of a codestream's main-header segments and first SOT."""
    out: list[tuple[int, int, int]] = []
    at = 2 if stream.startswith(b"\xff\x4f") else len(stream)
    while at + 4 <= len(stream) and len(out) < 100:
        marker, length = struct.unpack_from(">HH", stream, at)
        out.append((marker, at, length))
        if marker == 0xFF90 or marker >> 8 != 0xFF:
            break
        at += 2 + length
    return out


def _j2k_field(
    stream: bytes, rng: random.Random, marker: int, fields: list[tuple[int, int, tuple[int, ...]]]
) -> bytes | None:
    found = [s for s in j2k_segments(stream) if s[0] == marker]
    if not found:
        return None
    at = found[0][1]
    offset, size, table = rng.choice(fields)
    original = int.from_bytes(stream[at + offset : at + offset + size], "big")
    return put(stream, at + offset, pack(near(rng, original, table), size, little=False))


_SIZES = (0, 1, 2, 3, 7, 8, 64, 65535, 65536, 0x7FFFFFFF, 0xFFFFFFFF)


def j2k_siz(data: bytes, rng: random.Random) -> bytes | None:
    """SIZ: Xsiz, Ysiz, image and tile offsets, tile sizes, Csiz, precision, sub-sampling."""
    fields = [
        (6, 4, _SIZES),
        (10, 4, _SIZES),
        (14, 4, (0, 1, 8, 100)),
        (18, 4, (0, 1, 8, 100)),
        (22, 4, _SIZES),
        (26, 4, _SIZES),
        (30, 4, (0, 1, 7)),
        (34, 4, (0, 1, 7)),
        (38, 2, (0, 2, 3, 4, 16384, 65535)),
        (40, 1, (0x00, 0x07, 0x0B, 0x0F, 0x10, 0x1F, 0x25, 0x26, 0x8F, 0xFF)),
        (41, 1, (0, 2, 3, 255)),
        (42, 1, (0, 2, 3, 255)),
        (2, 2, U16),
    ]
    return _in_frame(data, lambda s: _j2k_field(s, rng, 0xFF51, fields))


def j2k_cod(data: bytes, rng: random.Random) -> bytes | None:
    """COD: decomposition levels, layers, progression, code blocks, style, transform."""
    fields = [
        (9, 1, (0, 1, 5, 6, 31, 32, 33, 255)),
        (6, 2, (0, 1, 65535)),
        (5, 1, (0, 1, 2, 3, 4, 5, 255)),
        (10, 1, (0, 4, 8, 9, 255)),
        (11, 1, (0, 4, 8, 9, 255)),
        (12, 1, (0, 0x40, 0x3F, 0xFF)),
        (13, 1, (0, 1, 2, 255)),
        (4, 1, (0, 1, 6, 7, 0xFF)),
        (8, 1, (0, 1, 2, 255)),
        (2, 2, U16),
    ]
    return _in_frame(data, lambda s: _j2k_field(s, rng, 0xFF52, fields))


def j2k_markers(data: bytes, rng: random.Random) -> bytes | None:
    """SOT tile index / length / parts, QCD, a main-header segment removed or duplicated,
    EOC dropped, or the tile data cut short."""

    def mutate(stream: bytes) -> bytes | None:
        segments = j2k_segments(stream)
        if not segments:
            return None
        op = rng.randrange(5)
        if op == 0:
            fields = [
                (4, 2, (1, 2, 65535)),
                (6, 4, (0, 1, 12, 14, 0xFFFFFFFF)),
                (10, 1, (1, 2, 255)),
                (11, 1, (0, 2, 255)),
                (2, 2, (0, 9, 11, 65535)),
            ]
            return _j2k_field(stream, rng, 0xFF90, fields)
        if op == 1:
            return _j2k_field(
                stream,
                rng,
                0xFF5C,
                [(4, 1, (0x00, 0x1F, 0x42, 0xFF)), (5, 1, BYTES), (2, 2, (0, 3, 65535))],
            )
        _, at, length = rng.choice([s for s in segments if s[0] != 0xFF90] or segments)
        end = at + 2 + length
        if op == 2:
            return (
                stream[:at] + stream[end:]
                if rng.random() < 0.5
                else (stream[:end] + stream[at:end] + stream[end:])
            )
        if op == 3:
            return stream[:-2] if stream.endswith(b"\xff\xd9") else stream + b"\xff\xd9"
        body = segments[-1][1]
        return stream[: rng.randrange(body, len(stream))]

    return _in_frame(data, mutate)


def rle_header(data: bytes, rng: random.Random) -> bytes | None:
    """The RLE header's segment count or an offset; or a run byte inside a segment."""

    def mutate(stream: bytes) -> bytes | None:
        if len(stream) < 64:
            return None
        if rng.random() < 0.3:
            at = rng.randrange(64, len(stream))
            return put(stream, at, bytes([rng.choice((0x80, 0x81, 0x7F, 0x00, 0xFF))]))
        slot = rng.choice((0, 0, *range(1, 16)))
        original = struct.unpack_from("<I", stream, 4 * slot)[0]
        table = (0, 1, 2, 3, 4, 15, 16, 63, 64, len(stream), len(stream) + 1, 0xFFFFFFFF)
        return put(stream, 4 * slot, pack(near(rng, original, table), 4))

    return _in_frame(data, mutate)


@lru_cache(maxsize=1)
def _deflate_bomb() -> bytes:
    """A deflated explicit-LE dataset holding a 320 MiB OB element of zeros (~330 KB)."""
    head = b"\x09\x00\x10\x00OB\x00\x00" + struct.pack("<I", 320 << 20)
    pack = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    parts = [pack.compress(head)] + [pack.compress(zeros) for _ in range(320)]
    return b"".join([*parts, pack.flush()])


def deflate_stream(data: bytes, rng: random.Random) -> bytes | None:
    """The deflated body: bytes flipped, cut, followed by garbage, or replaced by a bomb."""
    found = layout(data)
    if not found.deflated or found.dataset_at >= len(data):
        return None
    head, body = data[: found.dataset_at], bytearray(data[found.dataset_at :])
    op = rng.randrange(5)
    if op == 0:
        for _ in range(rng.choice((1, 2, 8))):
            body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
    elif op == 1:
        body = body[: rng.randrange(len(body))]
    elif op == 2:
        body += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    elif op == 3:
        body[: rng.randrange(1, 8)] = bytes(rng.randrange(256) for _ in range(4))
    else:
        return head + _deflate_bomb() if rng.random() < 0.1 else None
    return head + bytes(body)
