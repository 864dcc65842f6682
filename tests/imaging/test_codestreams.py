"""imaging.codestreams: marker parsers on real and freshly encoded codestreams, and on cut
and mutated ones, which must only ever raise the imaging path's own errors."""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from typing import Any

import imagecodecs
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from imaging.codestreams import (
    MAX_FRAGMENTS,
    FrameInfo,
    check_frame,
    frame_fragments,
    inflate_bounded,
    j2k_info,
    jpeg_info,
    rle_info,
)
from imaging.errors import (
    CodestreamMismatchError,
    CorruptDicomError,
    DecompressionBombError,
    ImagingError,
    TruncatedDicomError,
    UnsupportedImageError,
)

# Single-frame compressed files of pydicom and pydicom-data, every syntax, grey and colour.
REAL_FILES = [
    "RG1_J2KR.dcm",
    "RG3_J2KI.dcm",
    "693_J2KI.dcm",
    "GDCMJ2K_TextGBR.dcm",
    "examples_jpeg2k.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_rle_32bit.dcm",
    "rtdose_rle_1frame.dcm",
    "JPEG-LL.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "JPGExtended.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_small_odd_jpeg.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEGLSNearLossless_16.dcm",
    "SC_rgb_jls_lossy_line.dcm",
]


def _real(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name)
    assert path is not None, f"{name} missing: is pydicom-data installed?"
    return pydicom.dcmread(path)


def _frame(ds: pydicom.Dataset) -> bytes:
    return next(generate_frames(ds.PixelData, number_of_frames=1))


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_codestreams_agree_with_their_headers(name: str) -> None:
    ds = _real(name)
    info = check_frame(
        ds.PixelData,
        ds.file_meta.TransferSyntaxUID,
        rows=ds.Rows,
        columns=ds.Columns,
        bits_allocated=ds.BitsAllocated,
        samples=ds.SamplesPerPixel,
    )
    assert info is not None
    assert info.components == ds.SamplesPerPixel
    if info.kind != "RLE":
        assert (info.rows, info.columns) == (ds.Rows, ds.Columns)
        assert 2 <= info.precision <= ds.BitsAllocated


def test_real_codestream_values() -> None:
    assert j2k_info(_frame(_real("RG1_J2KR.dcm"))) == FrameInfo("JPEG 2000", 1955, 1841, 1, 15)
    assert jpeg_info(_frame(_real("JPGExtended.dcm"))) == FrameInfo("JPEG", 1024, 256, 1, 12)
    ls = jpeg_info(_frame(_real("MR_small_jpeg_ls_lossless.dcm")))
    assert ls == FrameInfo("JPEG-LS", 64, 64, 1, 16)
    assert rle_info(_frame(_real("MR_small_RLE.dcm")), bytes_per_sample=2).precision == 16


def _ramp(dtype: type, rows: int = 48, columns: int = 80) -> np.ndarray[Any, Any]:
    top = 255 if dtype is np.uint8 else 4095
    return (np.add.outer(np.arange(rows) * 5, np.arange(columns) * 3) % top).astype(dtype)


@pytest.mark.parametrize(
    ("encode", "kind", "precision"),
    [
        (lambda a: imagecodecs.jpeg2k_encode(a, level=0, bitspersample=12), "JPEG 2000", 12),
        (
            lambda a: imagecodecs.jpeg2k_encode(a, level=0, codecformat="jp2", bitspersample=12),
            "JPEG 2000",
            12,
        ),
        (lambda a: imagecodecs.htj2k_encode(a, level=0), "JPEG 2000", 16),  # OpenJPH: 16
        (lambda a: imagecodecs.jpegls_encode(a), "JPEG-LS", 16),  # SPIFF header first
        (lambda a: imagecodecs.ljpeg_encode(a, bitspersample=12), "JPEG", 12),  # SOF3
    ],
)
def test_freshly_encoded_codestreams(encode: Any, kind: str, precision: int) -> None:
    pixels = _ramp(np.uint16)
    data = bytes(encode(pixels))
    info = j2k_info(data) if kind == "JPEG 2000" else jpeg_info(data)
    assert info == FrameInfo(kind, 48, 80, 1, precision)


def test_pillow_baseline_jpeg_and_jp2_box_walk() -> None:
    buffer = io.BytesIO()
    Image.fromarray(_ramp(np.uint8)).save(buffer, format="JPEG", quality=90)
    assert jpeg_info(buffer.getvalue()) == FrameInfo("JPEG", 48, 80, 1, 8)
    jp2 = bytearray(imagecodecs.jpeg2k_encode(_ramp(np.uint16), level=0, codecformat="jp2"))
    struct.pack_into(">L", jp2, jp2.find(b"ihdr") + 4, 4800)  # ihdr height only
    with pytest.raises(CodestreamMismatchError, match="JP2 header box declares 4800 x 80"):
        j2k_info(bytes(jp2))


def _codestream_samples() -> list[bytes]:
    pixels = _ramp(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(_ramp(np.uint8)).save(buffer, format="JPEG")
    return [
        bytes(imagecodecs.jpeg2k_encode(pixels, level=0, codecformat="j2k")),
        bytes(imagecodecs.jpeg2k_encode(pixels, level=0, codecformat="jp2")),
        bytes(imagecodecs.htj2k_encode(pixels, level=0)),
        bytes(imagecodecs.jpegls_encode(pixels)),
        buffer.getvalue(),
        _frame(_real("JPGExtended.dcm")),
        _frame(_real("MR_small_RLE.dcm")),
    ]


def _parse_any(data: bytes) -> None:
    """Every parser on ``data``: the result does not matter, the exception types do."""
    for parse in (j2k_info, jpeg_info, lambda d: rle_info(d, bytes_per_sample=2)):
        with contextlib.suppress(ImagingError):
            parse(data)
    with contextlib.suppress(ImagingError):
        value = encapsulate([data]) if data else b""
        check_frame(value, "1.2.840.10008.1.2.4.90", rows=48, columns=80, bits_allocated=16)


def test_every_cut_raises_only_domain_errors() -> None:
    for data in _codestream_samples():
        for end in range(min(len(data), 400)):
            _parse_any(data[:end])


def test_cut_headers_are_reported_as_truncated() -> None:
    j2k = _codestream_samples()[0]
    with pytest.raises(TruncatedDicomError):
        j2k_info(j2k[:30])
    jpeg = _codestream_samples()[4]
    with pytest.raises(TruncatedDicomError):
        jpeg_info(jpeg[: jpeg.find(b"\xff\xc0") + 5])


def test_random_mutations_raise_only_domain_errors() -> None:
    rng = np.random.default_rng(16)
    for data in _codestream_samples():
        head = min(len(data), 300)
        for _ in range(400):
            mutated = bytearray(data)
            for at in rng.integers(0, head, size=int(rng.integers(1, 6))):
                mutated[int(at)] = int(rng.integers(0, 256))
            _parse_any(bytes(mutated))


def test_j2k_grid_rules() -> None:
    j2k = bytearray(imagecodecs.jpeg2k_encode(_ramp(np.uint16), level=0, codecformat="j2k"))
    tiny_tiles = bytearray(j2k)
    struct.pack_into(">LL", tiny_tiles, 24, 1, 1)  # 48 x 80 = 3840 tiles: allowed
    assert j2k_info(bytes(tiny_tiles)).rows == 48
    struct.pack_into(">LL", tiny_tiles, 8, 1000, 1000)
    with pytest.raises(CorruptDicomError, match="1,000,000 tiles"):
        j2k_info(bytes(tiny_tiles))
    offset = bytearray(j2k)  # an image offset: size is Xsiz - XOsiz
    struct.pack_into(">LLLL", offset, 8, 80 + 7, 48 + 5, 7, 5)
    assert (j2k_info(bytes(offset)).rows, j2k_info(bytes(offset)).columns) == (48, 80)
    sub = bytearray(j2k)  # sub-sampled by 2: component 0 is 24 x 40
    sub[43:45] = b"\x02\x02"
    assert (j2k_info(bytes(sub)).rows, j2k_info(bytes(sub)).columns) == (24, 40)
    zero = bytearray(j2k)
    sub[43] = 0
    zero[43] = 0
    with pytest.raises(CorruptDicomError, match="sub-sampling of 0"):
        j2k_info(bytes(zero))


def test_jpeg_dnl_height_and_jpeg_ls_oversize() -> None:
    buffer = io.BytesIO()
    Image.fromarray(_ramp(np.uint8)).save(buffer, format="JPEG")
    dnl = bytearray(buffer.getvalue())
    struct.pack_into(">H", dnl, dnl.find(b"\xff\xc0") + 5, 0)
    with pytest.raises(UnsupportedImageError, match="DNL"):
        jpeg_info(bytes(dnl))
    ls = bytearray(imagecodecs.jpegls_encode(_ramp(np.uint16)))
    sof = ls.find(b"\xff\xf7")
    struct.pack_into(">HH", ls, sof + 5, 0, 0)
    with pytest.raises(CorruptDicomError, match="0 x 0"):
        jpeg_info(bytes(ls))
    lse = b"\xff\xf8\x00\x08\x04\x02" + struct.pack(">HH", 48, 80)
    end = sof + 2 + struct.unpack_from(">H", ls, sof + 2)[0]
    assert jpeg_info(bytes(ls[:end]) + lse + bytes(ls[end:])).rows == 48


def test_rle_header_rules() -> None:
    frame = _frame(_real("MR_small_RLE.dcm"))
    assert rle_info(frame, bytes_per_sample=2).components == 1
    with pytest.raises(CodestreamMismatchError, match="2 segments where 1 sample"):
        rle_info(frame, bytes_per_sample=1)
    backwards = frame[:8] + struct.pack("<L", 32) + frame[12:]
    with pytest.raises(CorruptDicomError, match="not increasing"):
        rle_info(backwards, bytes_per_sample=2)
    with pytest.raises(TruncatedDicomError):
        rle_info(frame[:40], bytes_per_sample=2)
    zero = struct.pack("<L", 0) + frame[4:]
    with pytest.raises(CodestreamMismatchError):
        rle_info(zero, bytes_per_sample=2)


def _item(value: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHL", 0xFFFE, 0xE000, len(value) if length is None else length) + value


def test_fragments_are_views_of_the_items() -> None:
    value = _item(struct.pack("<L", 0)) + _item(b"ab") + _item(b"cdef")
    assert [bytes(f) for f in frame_fragments(value)] == [b"ab", b"cdef"]
    # a trailing sequence delimiter (as in the raw element) is accepted, nothing after it
    delimiter = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    assert len(frame_fragments(value + delimiter)) == 2
    with pytest.raises(CorruptDicomError, match="tag"):
        frame_fragments(value + delimiter + b"xx")


@pytest.mark.parametrize(
    ("value", "error", "words"),
    [
        (b"", CorruptDicomError, "no fragment"),
        (_item(b""), CorruptDicomError, "no fragment"),
        (_item(b"") + _item(b"") + _item(b""), CorruptDicomError, "no fragment"),
        (_item(b"") + _item(b"abcd", 1 << 31), TruncatedDicomError, "2,147,483,648 bytes"),
        (_item(b"") + _item(b"abcdefghijkl", 2), CorruptDicomError, "item 2 should start"),
        (_item(b"") + b"\xfe\xff\x00", TruncatedDicomError, "inside the header"),
        (_item(b"abc") + _item(b"ab"), CorruptDicomError, "not a multiple of 4"),
        (_item(struct.pack("<LL", 0, 10)) + _item(b"ab"), CorruptDicomError, "lists 2 frames"),
        (_item(struct.pack("<L", 1 << 30)) + _item(b"ab"), CorruptDicomError, "1,073,741,824"),
        (_item(struct.pack("<L", 4)) + _item(b"ab"), CorruptDicomError, "not the start"),
        (_item(b"", 0xFFFFFFFF), CorruptDicomError, "no length"),
    ],
)
def test_malformed_encapsulation(value: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        frame_fragments(value)


def test_absurd_fragment_counts_are_refused() -> None:
    many = _item(b"") + _item(b"") * MAX_FRAGMENTS + _item(b"ab")
    with pytest.raises(CorruptDicomError, match="more than 65,536 fragments"):
        frame_fragments(many)
    assert len(frame_fragments(_item(b"") + _item(b"ab") * 1000)) == 1000


def test_check_frame_refuses_what_contradicts_the_header() -> None:
    j2k = bytes(imagecodecs.jpeg2k_encode(_ramp(np.uint16), level=0, codecformat="j2k"))
    value = encapsulate([j2k])
    syntax = "1.2.840.10008.1.2.4.90"
    assert check_frame(value, syntax, rows=48, columns=80, bits_allocated=16) is not None
    with pytest.raises(CodestreamMismatchError, match="48 x 80 pixels, the DICOM header 480"):
        check_frame(value, syntax, rows=480, columns=80, bits_allocated=16)
    with pytest.raises(CodestreamMismatchError, match="16-bit samples, more than the 8"):
        check_frame(value, syntax, rows=48, columns=80, bits_allocated=8)
    with pytest.raises(CodestreamMismatchError, match="1 components, the DICOM header 3"):
        check_frame(value, syntax, rows=48, columns=80, bits_allocated=16, samples=3)
    # a syntax without a parser: only the items are checked
    assert (
        check_frame(value, "1.2.840.10008.1.2.4.100", rows=1, columns=1, bits_allocated=8) is None
    )
    # fragments are joined before parsing: a SIZ split across two fragments still parses
    split = encapsulate([j2k[:20], j2k[20:]], has_bot=False)
    assert check_frame(split, syntax, rows=48, columns=80, bits_allocated=16) is not None


def _deflate(data: bytes, level: int = 6) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def test_inflate_bounded() -> None:
    payload = np.random.default_rng(1).bytes(3_000_000) + bytes(2_000_000)
    out = io.BytesIO()
    assert inflate_bounded(_deflate(payload), out, limit=len(payload)) == len(payload)
    assert out.getvalue() == payload
    trailing = io.BytesIO()  # bytes after the end of the stream are ignored, as by pydicom
    inflate_bounded(_deflate(b"abc") + b"junk", trailing, limit=10)
    assert trailing.getvalue() == b"abc"
    with pytest.raises(DecompressionBombError, match="more than 4,999,999 bytes"):
        inflate_bounded(_deflate(payload), io.BytesIO(), limit=len(payload) - 1)
    with pytest.raises(TruncatedDicomError, match="ends inside"):
        inflate_bounded(_deflate(payload)[:-100], io.BytesIO(), limit=len(payload))
    with pytest.raises(CorruptDicomError, match="does not inflate"):
        inflate_bounded(b"\xff" * 100, io.BytesIO(), limit=1000)
    with pytest.raises(TruncatedDicomError):
        inflate_bounded(b"", io.BytesIO(), limit=1000)


def test_inflate_stops_at_the_limit_of_a_bomb() -> None:
    bomb = _deflate(bytes(256 * 2**20), level=9)  # 256 MiB in ~250 kB
    out = io.BytesIO()
    with pytest.raises(DecompressionBombError):
        inflate_bounded(bomb, out, limit=8 * 2**20)
    assert out.tell() <= 8 * 2**20


@pytest.mark.parametrize(
    ("marker", "precision", "ok"),
    [(0xC0, 8, True), (0xC0, 12, False), (0xC1, 12, True), (0xC1, 0, False),
     (0xC3, 16, True), (0xC3, 1, False), (0xC3, 17, False), (0xF7, 2, True)],
)  # fmt: skip
def test_jpeg_precision_must_fit_the_process(marker: int, precision: int, ok: bool) -> None:
    segment = struct.pack(">HBHHB3B", 11, precision, 8, 8, 1, 1, 0x11, 0)
    data = b"\xff\xd8" + bytes([0xFF, marker]) + segment + b"\xff\xda"
    if ok:
        assert jpeg_info(data).precision == precision
    else:
        with pytest.raises(CorruptDicomError, match="does not allow"):
            jpeg_info(data)
    zero_sampling = data.replace(b"\x01\x11\x00", b"\x01\x00\x00")
    if ok and marker != 0xF7:
        with pytest.raises(CorruptDicomError, match="sampling factor"):
            jpeg_info(zero_sampling)


def test_jpeg_ls_must_end_with_eoi_and_pixel_data_must_be_bytes() -> None:
    ls = bytes(imagecodecs.jpegls_encode(_ramp(np.uint16)))
    syntax = "1.2.840.10008.1.2.4.80"
    padded = encapsulate([ls + b"\0"])  # an even-length pad after EOI is fine
    assert check_frame(padded, syntax, rows=48, columns=80, bits_allocated=16) is not None
    with pytest.raises(TruncatedDicomError, match="EOI"):
        check_frame(encapsulate([ls[:-40]]), syntax, rows=48, columns=80, bits_allocated=16)
    with pytest.raises(CorruptDicomError, match="holds str"):
        frame_fragments("text, not items")  # type: ignore[arg-type]
