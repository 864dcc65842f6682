"""What compressed pixel data claim about themselves, read before any decoder runs.

A decoder sizes its buffers from the codestream, not from the DICOM header: a 1 kB JPEG
2000 codestream whose SIZ marker declares 60000 x 60000 pixels asks OpenJPEG for 14 GB in
an image whose header says 64 x 64 (and a deflated dataset hides a gigabyte of zeros in
1 MB). The functions here read the few header bytes that decide such sizes,
**never trusting a length** (every length is checked against the bytes that are there, every
loop has a bound), so that :func:`imaging.dicom.check_dataset` can refuse a frame whose
codestream disagrees with the DICOM header before any plugin sees it:

* :func:`frame_fragments`: the items of encapsulated Pixel Data (Basic Offset Table, then
  fragments; PS3.5 A.4): item lengths past the data, a Basic Offset Table pointing outside
  or listing more frames than the header, absurd fragment counts.
* :func:`jpeg_info`: the frame header of a JPEG (ISO 10918-1 SOFn) or JPEG-LS (ISO 14495-1
  SOF55, with its LSE oversize-dimension segment) codestream.
* :func:`j2k_info`: the SIZ marker of a JPEG 2000 / HTJ2K codestream, raw or in a JP2 file
  (whose ``ihdr`` box Pillow sizes its buffer from, so it is checked too).
* :func:`rle_info`: the 64-byte header of a DICOM RLE frame (PS3.5 G.5).
* :func:`check_frame`: all of the above against the header's rows, columns, samples and
  bits allocated. The size must be the header's exactly (a decoder's output of another shape
  is refused after decoding anyway), the components the header's samples, the precision at
  most the bits allocated (real files often declare a precision other than Bits Stored).
* :func:`inflate_bounded`: a raw deflate stream (Deflated Explicit VR Little Endian, PS3.5
  A.5) inflated at most ``limit`` bytes.

Every function raises only :class:`imaging.errors.ImagingError` subclasses on bad input:
:class:`TruncatedDicomError` when the bytes end early, :class:`CorruptDicomError` when
they are malformed, :class:`CodestreamMismatchError` when they contradict the header,
:class:`DecompressionBombError` when inflating would pass its limit.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import pydicom.uid as uids

from imaging.errors import (
    CodestreamMismatchError,
    CorruptDicomError,
    DecompressionBombError,
    TruncatedDicomError,
    UnsupportedImageError,
)

Buffer = bytes | bytearray | memoryview

#: more items than this in one frame's Pixel Data is refused: a 100 MB upload would need
#: fragments of 1.5 kB on average, and writers fragment at 8 kB or more (or not at all)
MAX_FRAGMENTS = 65_536
#: marker segments walked before a JPEG frame header (or a JP2 box count) is given up on
MAX_SEGMENTS = 4_096
#: a JPEG 2000 tile index (Isot) is 16 bits: no codestream can have more tiles
MAX_J2K_TILES = 65_535
#: inflated in steps of this many bytes, so the limit is never passed by more than one step
INFLATE_STEP = 1 << 20

_ITEM, _SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
#: JPEG SOFn markers (0xC4 DHT, 0xC8 JPG and 0xCC DAC share the range) and JPEG-LS SOF55
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM: no length field
_LSE = 0xF8

JPEG_TRANSFER_SYNTAXES = frozenset(
    {
        uids.JPEGBaseline8Bit,
        uids.JPEGExtended12Bit,
        uids.JPEGLossless,
        uids.JPEGLosslessSV1,
        uids.JPEGLSLossless,
        uids.JPEGLSNearLossless,
    }
)
J2K_TRANSFER_SYNTAXES = frozenset(
    {uids.JPEG2000Lossless, uids.JPEG2000, uids.HTJ2KLossless, uids.HTJ2KLosslessRPCL, uids.HTJ2K}
)


@dataclass(frozen=True)
class FrameInfo:
    """What a frame's own header declares: ``kind`` ("JPEG", "JPEG-LS", "JPEG 2000", "RLE"),
    ``rows`` x ``columns`` pixels, ``components`` (samples per pixel), ``precision`` in bits
    (the largest of any component; for RLE, 8 x the bytes per sample)."""

    kind: str
    rows: int
    columns: int
    components: int
    precision: int


def _u16(data: Buffer, at: int, what: str) -> int:
    if at + 2 > len(data):
        raise TruncatedDicomError(f"the {what} ends at byte {len(data):,}, inside a marker")
    return int(struct.unpack_from(">H", data, at)[0])


# ------------------------------------------------------------------------ encapsulation
def frame_fragments(pixel_data: Buffer, *, frames: int = 1) -> list[memoryview]:
    """The fragments of encapsulated ``pixel_data`` (the Pixel Data value as pydicom reads
    it: items, without the sequence delimiter), as views, no copies: for a single-frame
    image (the only kind :func:`imaging.dicom.check_dataset` lets through), the frame's.

    Checks every item header against the bytes present, that the Basic Offset Table lists
    at most ``frames`` offsets, each the start of an item, strictly increasing from 0, and
    that there is at least one fragment and at most :data:`MAX_FRAGMENTS`.
    """
    if not isinstance(pixel_data, bytes | bytearray | memoryview):  # e.g. a text VR: str
        raise CorruptDicomError(
            f"the Pixel Data element holds {type(pixel_data).__name__}, not encapsulated bytes"
        )
    view = memoryview(pixel_data).cast("B")
    items: list[tuple[int, int]] = []  # (offset of the item tag, value length)
    at, end = 0, len(view)
    for index in range(MAX_FRAGMENTS + 2):
        if at == end:
            break
        if at + 8 > end:
            raise TruncatedDicomError(
                f"the encapsulated pixel data end inside the header of item {index}"
            )
        group, element, length = struct.unpack_from("<HHL", view, at)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER and at + 8 == end:
            break
        if tag != _ITEM:
            raise CorruptDicomError(
                f"byte {at:,} of the encapsulated pixel data holds tag ({group:04X},"
                f"{element:04X}) where item {index} should start: an item length before it "
                "is wrong"
            )
        if length == 0xFFFFFFFF:
            raise CorruptDicomError(f"item {index} of the encapsulated pixel data has no length")
        if at + 8 + length > end:
            raise TruncatedDicomError(
                f"item {index} of the encapsulated pixel data declares {length:,} bytes but "
                f"only {end - at - 8:,} follow: the file is truncated or the length is wrong"
            )
        items.append((at, length))
        at += 8 + length
    else:
        raise CorruptDicomError(
            f"the encapsulated pixel data hold more than {MAX_FRAGMENTS:,} fragments"
        )
    if len(items) < 2 or all(length == 0 for _, length in items[1:]):
        raise CorruptDicomError("the encapsulated pixel data hold no fragment of the frame")
    _check_offset_table(view, items, frames)
    return [view[start + 8 : start + 8 + length] for start, length in items[1:]]


def _check_offset_table(view: memoryview, items: list[tuple[int, int]], frames: int) -> None:
    """The Basic Offset Table (item 0): offsets from the first fragment's item tag."""
    bot_at, bot_length = items[0]
    if bot_length % 4:
        raise CorruptDicomError(
            f"the Basic Offset Table holds {bot_length} bytes, not a multiple of 4"
        )
    count = bot_length // 4
    if count > frames:
        raise CorruptDicomError(
            f"the Basic Offset Table lists {count:,} frames where the header declares {frames}"
        )
    first = items[1][0]
    starts = {start - first for start, _ in items[1:]}
    offsets = struct.unpack_from(f"<{count}L", view, bot_at + 8)
    previous = -1
    for offset in offsets:
        if offset not in starts or offset <= previous or (previous < 0 and offset != 0):
            raise CorruptDicomError(
                f"the Basic Offset Table points to byte {offset:,} of the fragments, which "
                "is not the start of a fragment in order"
            )
        previous = offset


# ------------------------------------------------------------------------ JPEG, JPEG-LS
def jpeg_info(frame: Buffer) -> FrameInfo:
    """The frame header of a JPEG or JPEG-LS codestream: the first SOFn (or SOF55) segment.

    JPEG-LS dimensions of 0 are taken from an LSE oversize-dimension segment (ID 4) before
    the scan. A height of 0 in a JPEG SOF means "defined by a DNL marker after the first
    scan": no installed decoder supports that (libjpeg-turbo: "DNL not supported"), so it
    is refused as :class:`UnsupportedImageError`.
    """
    data = memoryview(frame).cast("B")
    if bytes(data[:2]) != b"\xff\xd8":
        raise CorruptDicomError("the JPEG frame does not start with an SOI marker")
    at, info = 2, None
    for _ in range(MAX_SEGMENTS):
        if at + 2 > len(data):
            raise TruncatedDicomError("the JPEG frame ends before its first scan")
        if data[at] != 0xFF:
            raise CorruptDicomError(f"byte {at:,} of the JPEG frame is not a marker")
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _STANDALONE:
            at += 2
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # SOI, EOI, SOS: the frame header is past
            break
        length = _u16(data, at + 2, "JPEG frame")
        if length < 2 or at + 2 + length > len(data):
            raise TruncatedDicomError(
                f"a JPEG marker segment declares {length:,} bytes past the end of the frame"
            )
        segment = data[at + 4 : at + 2 + length]
        if marker in _SOF and info is None:
            info = _sof(marker, segment)
            if marker != 0xF7:
                break
        elif marker == _LSE and info is not None and len(segment) >= 2 and segment[0] == 4:
            info = _lse_oversize(info, segment)
        at += 2 + length
    else:
        raise CorruptDicomError(f"the JPEG frame has over {MAX_SEGMENTS} markers before a scan")
    if info is None:
        raise CorruptDicomError("the JPEG frame has no frame header (SOF) before its scan")
    if info.rows == 0 or info.columns == 0:
        if info.kind == "JPEG" and info.columns:
            raise UnsupportedImageError(
                "the JPEG frame defines its height in a DNL marker after the scan (height 0 in "
                "its frame header), which no installed decoder supports; re-encode the image"
            )
        raise CorruptDicomError(
            f"the {info.kind} frame header declares {info.rows} x {info.columns} pixels"
        )
    return info


def _sof(marker: int, segment: memoryview) -> FrameInfo:
    if len(segment) < 6:
        raise CorruptDicomError("the JPEG frame header (SOF) is too short")
    precision, rows, columns, components = struct.unpack_from(">BHHB", segment)
    if len(segment) != 6 + 3 * components:
        raise CorruptDicomError(
            f"the JPEG frame header holds {len(segment) + 2} bytes for {components} components"
        )
    kind = "JPEG-LS" if marker == 0xF7 else "JPEG"
    # ISO 10918-1 B.2.2: 8 bits in baseline, 8 or 12 in the other DCT processes, 2-16 in
    # the lossless ones (and JPEG-LS). GDCM aborts the process on a precision of 0.
    if marker == 0xC0:
        valid = precision == 8
    elif marker in (0xC3, 0xC7, 0xCB, 0xCF, 0xF7):
        valid = 2 <= precision <= 16
    else:
        valid = precision in (8, 12)
    if not valid or components == 0:
        raise CorruptDicomError(
            f"the {kind} frame header (SOF {marker:02X}) declares {precision}-bit samples in "
            f"{components} components, which its process does not allow"
        )
    sampling = segment[7 : 6 + 3 * components : 3]  # H << 4 | V of each component
    if marker != 0xF7 and any(not (1 <= f >> 4 <= 4 and 1 <= f & 15 <= 4) for f in sampling):
        raise CorruptDicomError(f"the {kind} frame header declares a sampling factor of 0 or > 4")
    return FrameInfo(kind, rows, columns, components, precision)


def _lse_oversize(info: FrameInfo, segment: memoryview) -> FrameInfo:
    """LSE ID 4 (ISO 14495-1 C.2.4.1.4): Wxy, then height and width in Wxy bytes each."""
    width = segment[1]
    if width not in (2, 3, 4) or len(segment) != 2 + 2 * width:
        raise CorruptDicomError("the JPEG-LS oversize-dimension segment is malformed")
    rows = int.from_bytes(segment[2 : 2 + width], "big")
    columns = int.from_bytes(segment[2 + width : 2 + 2 * width], "big")
    return FrameInfo(info.kind, rows, columns, info.components, info.precision)


# ------------------------------------------------------------------------ JPEG 2000
def j2k_info(frame: Buffer) -> FrameInfo:
    """The SIZ marker of a JPEG 2000 / HTJ2K codestream, raw or in a JP2 file's ``jp2c``.

    In a JP2 file the ``ihdr`` box must agree with SIZ (size, components). The size is that
    of component 0 on its own grid: ``ceil(Xsiz / XRsiz) - ceil(XOsiz / XRsiz)`` columns
    (the image offset and sub-sampling applied), and the tile count must fit a 16-bit index.
    """
    data = memoryview(frame).cast("B")
    if bytes(data[:4]) == _SOC_SIZ:
        return _siz(data)
    if bytes(data[:12]) != _JP2_SIGNATURE:
        raise CorruptDicomError("the JPEG 2000 frame is neither a codestream nor a JP2 file")
    codestream, ihdr = _jp2_boxes(data)
    info = _siz(codestream)
    if ihdr is not None and ihdr != (info.rows, info.columns, info.components):
        raise CodestreamMismatchError(
            f"the JP2 header box declares {ihdr[0]} x {ihdr[1]} pixels in {ihdr[2]} "
            f"components, its codestream {info.rows} x {info.columns} in {info.components}"
        )
    return info


def _jp2_boxes(data: memoryview) -> tuple[memoryview, tuple[int, int, int] | None]:
    """The ``jp2c`` box's contents and ``ihdr``'s (height, width, components)."""
    ihdr: tuple[int, int, int] | None = None
    at, end, inside_jp2h = 0, len(data), 0
    for _ in range(MAX_SEGMENTS):
        if at + 8 > end:
            break
        length, kind = struct.unpack_from(">L4s", data, at)
        header = 8
        if length == 1:
            if at + 16 > end:
                break
            length, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif length == 0:
            length = end - at
        if length < header or at + length > end:
            raise TruncatedDicomError(
                f"the JP2 box {kind!r} declares {length:,} bytes past the end of the frame"
            )
        if kind == b"jp2c":
            return data[at + header : at + length], ihdr
        if kind == b"jp2h":  # a super-box: walk into it
            inside_jp2h = at + length
            at += header
            continue
        if kind == b"ihdr" and at < inside_jp2h and length - header >= 14:
            height, width, components = struct.unpack_from(">LLH", data, at + header)
            ihdr = (height, width, components)
        at += length
    raise CorruptDicomError("the JP2 file holds no codestream (jp2c) box")


def _siz(codestream: memoryview) -> FrameInfo:
    if bytes(codestream[:4]) != _SOC_SIZ:
        raise CorruptDicomError("the JPEG 2000 codestream does not start with SOC and SIZ")
    if len(codestream) < 4 + 38 + 3:
        raise TruncatedDicomError("the JPEG 2000 codestream ends inside its SIZ marker")
    lsiz, _rsiz, xsiz, ysiz, xo, yo, xt, yt, xto, yto, csiz = struct.unpack_from(
        ">HHLLLLLLLLH", codestream, 4
    )
    if not 1 <= csiz <= 16384 or lsiz != 38 + 3 * csiz:
        raise CorruptDicomError(f"the JPEG 2000 SIZ marker is malformed ({csiz} components)")
    if len(codestream) < 4 + lsiz:
        raise TruncatedDicomError("the JPEG 2000 codestream ends inside its SIZ marker")
    if not (xo < xsiz and yo < ysiz and xt and yt and xto <= xo and yto <= yo):
        raise CorruptDicomError("the JPEG 2000 SIZ marker declares an empty or invalid grid")
    if xto + xt <= xo or yto + yt <= yo:
        raise CorruptDicomError("the JPEG 2000 SIZ marker's first tile misses the image")
    tiles = -(-(xsiz - xto) // xt) * -(-(ysiz - yto) // yt)
    if tiles > MAX_J2K_TILES:
        raise CorruptDicomError(
            f"the JPEG 2000 codestream declares {tiles:,} tiles; at most {MAX_J2K_TILES:,} "
            "can be indexed"
        )
    components = [struct.unpack_from(">BBB", codestream, 42 + 3 * c) for c in range(csiz)]
    if any(dx == 0 or dy == 0 for _, dx, dy in components):
        raise CorruptDicomError("the JPEG 2000 SIZ marker declares a sub-sampling of 0")
    _, dx, dy = components[0]
    # component 0 on its own (sub-sampled) grid: ceil(Ysiz / dy) - ceil(YOsiz / dy) rows
    rows = -(-ysiz // dy) - -(-yo // dy)
    columns = -(-xsiz // dx) - -(-xo // dx)
    precision = max((ssiz & 0x7F) + 1 for ssiz, _, _ in components)
    return FrameInfo("JPEG 2000", rows, columns, csiz, precision)


# ------------------------------------------------------------------------ RLE
def rle_info(frame: Buffer, *, bytes_per_sample: int, samples: int = 1) -> FrameInfo:
    """The 64-byte RLE header (PS3.5 G.5): the segment count and its first offsets.

    ``samples * bytes_per_sample`` segments are needed; offset 1 is 64, the used offsets
    increase strictly and lie inside the frame. The size is not in an RLE frame: the
    decoders take the header's, so ``rows`` and ``columns`` are 0 here.
    """
    data = memoryview(frame).cast("B")
    if len(data) < 64:
        raise TruncatedDicomError(f"the RLE frame holds {len(data)} bytes, less than its header")
    count, *offsets = struct.unpack_from("<16L", data)
    expected = samples * bytes_per_sample
    if not 1 <= count <= 15 or count != expected:
        raise CodestreamMismatchError(
            f"the RLE header declares {count:,} segments where {samples} sample(s) of "
            f"{bytes_per_sample} byte(s) need {expected}"
        )
    used = offsets[:count]
    if used[0] != 64 or any(b <= a for a, b in itertools.pairwise(used)):
        raise CorruptDicomError("the RLE header's segment offsets are not increasing from 64")
    if used[-1] >= len(data):
        raise TruncatedDicomError(
            f"the RLE header points to byte {used[-1]:,} of a {len(data):,}-byte frame"
        )
    return FrameInfo("RLE", 0, 0, samples, 8 * bytes_per_sample)


# ------------------------------------------------------------------------ the check
def check_frame(
    pixel_data: Buffer,
    transfer_syntax: str,
    *,
    rows: int,
    columns: int,
    bits_allocated: int,
    samples: int = 1,
) -> FrameInfo | None:
    """Refuse encapsulated single-frame ``pixel_data`` whose codestream contradicts the
    header (see the module docstring); return what the codestream declares.

    None for a transfer syntax this module has no parser for (the fragments are still
    checked). Costs one copy of the compressed frame when it is in several fragments.
    """
    fragments = frame_fragments(pixel_data, frames=1)
    frame: Buffer = fragments[0] if len(fragments) == 1 else b"".join(fragments)
    if transfer_syntax == uids.RLELossless:
        return rle_info(frame, bytes_per_sample=bits_allocated // 8, samples=samples)
    if transfer_syntax in JPEG_TRANSFER_SYNTAXES:
        info = jpeg_info(frame)
        # CharLS spends 5-11 s on a JPEG-LS stream cut before its EOI (1 ms with one)
        if info.kind == "JPEG-LS" and not bytes(frame[-8:]).rstrip(b"\0").endswith(b"\xff\xd9"):
            raise TruncatedDicomError("the JPEG-LS frame does not end with an EOI marker")
    elif transfer_syntax in J2K_TRANSFER_SYNTAXES:
        info = j2k_info(frame)
    else:
        return None
    if (info.rows, info.columns) != (rows, columns):
        raise CodestreamMismatchError(
            f"the {info.kind} codestream declares {info.rows:,} x {info.columns:,} pixels, "
            f"the DICOM header {rows:,} x {columns:,}: refused before decoding"
        )
    if info.components != samples:
        raise CodestreamMismatchError(
            f"the {info.kind} codestream declares {info.components:,} components, the DICOM "
            f"header {samples} sample(s) per pixel: refused before decoding"
        )
    if info.precision > bits_allocated:
        raise CodestreamMismatchError(
            f"the {info.kind} codestream declares {info.precision}-bit samples, more than "
            f"the {bits_allocated} bits allocated in the DICOM header: refused before decoding"
        )
    return info


# ------------------------------------------------------------------------ deflate
def inflate_bounded(deflated: Buffer, out: BinaryIO, *, limit: int) -> int:
    """Inflate the raw deflate stream ``deflated`` into ``out``; return the bytes written.

    Raises :class:`DecompressionBombError` as soon as more than ``limit`` bytes would come
    out (never holding more than ``limit + INFLATE_STEP``), :class:`TruncatedDicomError`
    when the stream ends before its final block, :class:`CorruptDicomError` when it is not
    deflate. Bytes after the end of the stream are ignored, as pydicom does.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending: Buffer = memoryview(deflated).cast("B")
    total = 0
    # each step either fills INFLATE_STEP bytes of output or consumes all pending input
    for _ in range(limit // INFLATE_STEP + 3):
        try:
            chunk = inflater.decompress(pending, INFLATE_STEP)
        except zlib.error as exc:
            raise CorruptDicomError(f"the deflated dataset does not inflate: {exc}") from None
        total += len(chunk)
        if total > limit:
            raise DecompressionBombError(
                f"the deflated dataset inflates to more than {limit:,} bytes (from "
                f"{len(deflated):,}), more than any image within the pixel budget needs; "
                "send it uncompressed or raise the pixel budget"
            )
        out.write(chunk)
        pending = inflater.unconsumed_tail
        if inflater.eof:
            return total
        if not pending and len(chunk) < INFLATE_STEP:
            raise TruncatedDicomError(
                f"the deflated dataset ends inside its compressed stream ({len(deflated):,} "
                "bytes): the file is truncated"
            )
    raise DecompressionBombError(f"the deflated dataset inflates to more than {limit:,} bytes")


__all__ = [
    "J2K_TRANSFER_SYNTAXES",
    "JPEG_TRANSFER_SYNTAXES",
    "MAX_FRAGMENTS",
    "MAX_J2K_TILES",
    "FrameInfo",
    "check_frame",
    "frame_fragments",
    "inflate_bounded",
    "j2k_info",
    "jpeg_info",
    "rle_info",
]
