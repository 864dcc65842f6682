"""DICOM bytes -> display pixels + header facts (``read_dicom``).

Pixel convention of the output: ``float32`` array of shape ``(rows, columns)``, values in
``[0, 1]``, **higher = denser / brighter** (bone white, air black, whatever the stored
photometric interpretation), row 0 at the top of the image as stored.

Accepted: DICOM Part 10 files, and bare datasets (no preamble, no file meta) when they
parse. Refused, each with a domain error (a stable ``code``) from :mod:`imaging.errors`:
not DICOM, truncated or corrupt, no pixel data, colour, multi-frame, a transfer syntax no
installed decoder handles, and an image whose header declares more pixels than
``max_pixels``. The pixel budget is checked from the header **before** any pixel data is
decoded, so a hostile header cannot make the decoder allocate gigabytes.

Display: the DICOM grayscale chain of :mod:`imaging.display`, with its VOI fallback: a
header window or VOI LUT that leaves the image without contrast is replaced by the full
stored range, and ``facts.voi_fallback`` says so. Whether the image may be assessed at
all (modality, body part, view, blank) is :mod:`imaging.gate`'s question, not this one's.

Nothing here reads or returns patient identifiers: :class:`HeaderFacts` holds technical
facts only.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from imaging import display
from imaging.codestreams import check_frame, inflate_bounded
from imaging.decoders import decode_pixels
from imaging.errors import (
    ColourImageError,
    CorruptDicomError,
    ImagingError,
    MultiFrameError,
    NoPixelDataError,
    NotDicomError,
    PixelBudgetError,
    TruncatedDicomError,
    UnsupportedImageError,
    UnsupportedTransferSyntaxError,
)
from imaging.header import HeaderFacts, header_facts
from imaging.reduced import align_to_area_grid, decode_reduced

logger = logging.getLogger(__name__)
# pydicom warns about every oddity of real-world headers, quoting the offending value,
# which may be a patient's name: never let those reach logs. Problems that matter are
# raised as ImagingError instead.
warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\..*)?$")

#: default pixel budget: 36 Mpx (6000 x 6000) is well above any chest radiograph
DEFAULT_MAX_PIXELS = 36_000_000
#: a Deflated Explicit VR Little Endian dataset may inflate to at most ``max_pixels * 4``
#: bytes (the widest layout check_dataset accepts: 32 bits allocated, one sample, one
#: frame) plus this margin for the rest of the dataset (icons, overlays, private elements):
#: 160 MB at the default budget. pydicom itself would inflate any amount.
DEFLATE_MARGIN_BYTES = 16 * 2**20

_PIXEL_DATA = 0x7FE00010
_PIXEL_DATA_TAG_LE = b"\xe0\x7f\x10\x00"
_PIXEL_DATA_TAG_BE = b"\x7f\xe0\x00\x10"
_PIXEL_DATA_TAGS = re.compile(re.escape(_PIXEL_DATA_TAG_LE) + b"|" + re.escape(_PIXEL_DATA_TAG_BE))
#: the file meta of an inflated dataset handed to pydicom: Transfer Syntax UID only
_EXPLICIT_LE_META = b"\x02\x00\x10\x00UI" + struct.pack("<H", 20) + b"1.2.840.10008.1.2.1\x00"
_FLOAT_PIXEL_DATA = (0x7FE00008, 0x7FE00009)
_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")

# Magic numbers of files that people upload by mistake, for a message that says what
# the file is instead of "not DICOM".
_KNOWN_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
)


@dataclass(frozen=True)
class DecodedImage:
    """A decoded radiograph.

    ``pixels``: float32 ``(rows, columns)`` in ``[0, 1]``, higher = denser/brighter.
    ``facts``: technical header facts (no patient identifiers).
    ``contrast``: :func:`imaging.display.display_contrast` of ``pixels``, measured by the
    display chain (the gate's blank-image rule reads it).
    ``timings_ms``: ``parse`` and ``decode`` (pixel decoding + display chain) in ms.
    ``reduction``: ``2**r`` when a JPEG 2000 / HTJ2K image was decoded ``r`` wavelet levels
    short of full resolution (``read_dicom(..., min_side=R)``), 1 for the full image. Then
    ``pixels`` has shape ``(ceil(rows / 2**r), ceil(columns / 2**r))`` while ``facts`` keep
    the header's (original) ``rows``, ``columns`` and pixel spacing: pass
    :attr:`grid` to :func:`imaging.preprocess.preprocess` so the letterbox (and everything
    mapped back through it) is that of the original grid. See :mod:`imaging.reduced` for
    the pixel convention.
    """

    pixels: npt.NDArray[np.float32]
    facts: HeaderFacts
    contrast: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    reduction: int = 1

    @property
    def grid(self) -> tuple[int, int]:
        """The original image grid ``(rows, columns)`` that ``pixels`` cover."""
        return self.facts.rows, self.facts.columns


def read_dicom(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decoding_plugin: str | None = None,
    min_side: int | None = None,
) -> DecodedImage:
    """Decode DICOM ``data`` to display pixels; see the module docstring for the rules.

    ``decoding_plugin`` forces one pydicom pixel plugin (e.g. ``"gdcm"``); by default
    :mod:`imaging.decoders` picks the fastest installed one and falls back to the others.
    When the header's VOI leaves no contrast but the full stored range does, the stored
    range is used: ``facts.voi_source == "stored_range"`` and ``facts.voi_fallback`` holds
    a one-sentence note (see :func:`imaging.display.render`).

    ``min_side``: the caller needs the image no finer than this many pixels on its shorter
    side (the model resolution ``R``). A JPEG 2000 / HTJ2K image is then decoded at the
    coarsest wavelet level whose shorter side is still ``>= min_side`` (see
    :func:`imaging.reduced.choose_reduction`), through Pillow; ``reduction`` says by how
    much, and any failure decodes the full image. Ignored with ``decoding_plugin`` and for
    other transfer syntaxes. The display chain is the same either way.
    """
    start = time.perf_counter()
    ds = parse_dataset(data, max_pixels=max_pixels)
    facts = check_dataset(ds, max_pixels=max_pixels)
    parsed = time.perf_counter()
    reduced = (
        decode_reduced(ds, facts, min_side)
        if min_side is not None and decoding_plugin is None
        else None
    )
    if reduced is not None:
        stored, reduction = reduced.stored, reduced.factor
    else:
        stored, reduction = decode_pixels(ds, facts, data, plugin=decoding_plugin), 1
    pixels, transform, contrast = display.render(
        stored, ds, facts.bits_stored, facts.pixel_representation
    )
    pixels = align_to_area_grid(pixels, reduction, (facts.rows, facts.columns))
    done = time.perf_counter()
    return DecodedImage(
        pixels=pixels,
        facts=facts.with_display(transform),
        contrast=contrast,
        timings_ms={"parse": (parsed - start) * 1e3, "decode": (done - parsed) * 1e3},
        reduction=reduction,
    )


def read_header(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> HeaderFacts:
    """Parse and check ``data`` without decoding pixels; raise what ``read_dicom`` would.

    The display facts are the header's choice of VOI: without pixels there is no knowing
    whether it leaves contrast, so ``voi_fallback`` is always None here and ``voi_source``
    may differ from what :func:`read_dicom` reports for the same bytes.
    """
    ds = parse_dataset(data, max_pixels=max_pixels)
    facts = check_dataset(ds, max_pixels=max_pixels)
    return facts.with_display(display.describe(ds))


# ---------------------------------------------------------------------------- parsing
def _sniff_other_format(data: bytes) -> str | None:
    for magic, what in _KNOWN_FORMATS:
        if data.startswith(magic):
            return what
    return None


def _looks_like_bare_dataset(data: bytes) -> bool:
    """A dataset without preamble starts with a group 0x0002 or 0x0008 element.

    Checked before forcing pydicom to parse, because ``force=True`` on arbitrary bytes
    "succeeds" with a garbage dataset.
    """
    if len(data) < 8:
        return False
    group_le = int.from_bytes(data[0:2], "little")
    group_be = int.from_bytes(data[0:2], "big")
    return group_le in (0x0002, 0x0008) or group_be in (0x0002, 0x0008)


def parse_dataset(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Dataset:
    """Parse ``data`` into a pydicom Dataset with a usable transfer syntax.

    A Deflated Explicit VR Little Endian dataset is inflated here, at most
    ``max_pixels * 4 + DEFLATE_MARGIN_BYTES`` bytes (:class:`DecompressionBombError` past
    that), and keeps its file meta: the facts report the Deflated transfer syntax.
    Raises :class:`NotDicomError`, :class:`TruncatedDicomError` or
    :class:`CorruptDicomError`.
    """
    if not data:
        raise NotDicomError("the upload is empty; send a DICOM Part 10 file")
    is_part10 = len(data) >= 132 and data[128:132] == b"DICM"
    # Sniff only without the DICM marker: a Part 10 preamble may legally hold a TIFF
    # header (dual-personality files such as NEMA's RG1_UNCR).
    other = None if is_part10 else _sniff_other_format(data)
    if other is not None:
        raise NotDicomError(f"the upload is {other}, not DICOM; send the DICOM file itself")
    if not is_part10 and not _looks_like_bare_dataset(data):
        raise NotDicomError(
            "the upload is not DICOM: no 'DICM' marker at byte 128 and no DICOM dataset "
            "at the start"
        )
    inflated: io.BytesIO | None = None
    try:
        found = _deflated_meta(data)
        if found is not None:
            inflated = _inflate(data, found[2], max_pixels * 4 + DEFLATE_MARGIN_BYTES)
        ds = pydicom.dcmread(inflated or io.BytesIO(data), force=not is_part10)
        if found is not None:
            ds.file_meta, ds.preamble = found[0], found[1]
        # Touch every top-level element now, so a malformed value fails here (where it
        # is reported as corrupt) rather than at random later.
        for elem in ds:
            _ = elem.value
        mentions_pixels = _PIXEL_DATA not in ds and _mentions_pixel_data(inflated or data)
    except ImagingError:
        raise
    except EOFError as exc:
        raise TruncatedDicomError(
            f"the DICOM file is truncated ({len(data)} bytes): it ends inside an element"
        ) from exc
    except InvalidDicomError as exc:
        raise NotDicomError(f"the upload is not a valid DICOM file: {_short(exc)}") from exc
    except Exception as exc:  # pydicom raises many types on malformed input
        raise CorruptDicomError(f"the DICOM header could not be parsed: {_short(exc)}") from exc
    finally:
        if inflated is not None:  # the dataset holds its values: free the inflated copy
            inflated.close()
    # pydicom drops an element cut off by the end of the file (with a warning, which is
    # global state and useless across threads); a Pixel Data tag in the bytes but not in
    # the dataset is that case.
    if mentions_pixels:
        raise TruncatedDicomError(
            f"the DICOM file is truncated ({len(data):,} bytes): it ends before its last "
            "element is complete"
        )
    if "Rows" not in ds and "SOPClassUID" not in ds and _PIXEL_DATA not in ds:
        if not is_part10:
            raise NotDicomError("the upload is not DICOM: no image or SOP class elements")
        raise CorruptDicomError(
            "the DICOM file holds no recognisable elements (no SOP class, no image)"
        )
    _ensure_transfer_syntax(ds)
    return ds


def _deflated_meta(data: bytes) -> tuple[FileMetaDataset, bytes | None, int] | None:
    """File meta, preamble and dataset offset of a Deflated Explicit VR LE file, else None.

    Read as pydicom's ``dcmread`` reads them (which, for this syntax, would then inflate
    the rest of the file with no limit).
    """
    fp = io.BytesIO(data)
    preamble = read_preamble(fp, force=True)
    meta = _read_file_meta_info(fp)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    return meta, preamble, fp.tell()


def _inflate(data: bytes, start: int, limit: int) -> io.BytesIO:
    """``data[start:]`` inflated (at most ``limit`` bytes) as a Part 10 file that pydicom
    reads as Explicit VR Little Endian: an empty preamble, a meta with the syntax only."""
    out = io.BytesIO()
    out.write(bytes(128) + b"DICM" + _EXPLICIT_LE_META)
    inflate_bounded(memoryview(data)[start:], out, limit=limit)
    out.seek(0)
    return out


def _mentions_pixel_data(source: bytes | io.BytesIO) -> bool:
    """Whether the bytes hold a Pixel Data tag (either byte order) anywhere."""
    if isinstance(source, io.BytesIO):
        with source.getbuffer() as view:
            return _PIXEL_DATA_TAGS.search(view) is not None
    return _PIXEL_DATA_TAG_LE in source or _PIXEL_DATA_TAG_BE in source


def _short(exc: BaseException) -> str:
    """The first line of an exception message, bounded: never a traceback."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Give a bare dataset (no file meta) the transfer syntax pydicom parsed it with."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        implicit, little = True, True
    if implicit:
        uid = ImplicitVRLittleEndian
    else:
        uid = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid


# ---------------------------------------------------------------------------- checks
def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is None:
            raise CorruptDicomError(f"the image pixel module lacks {keyword}")
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise CorruptDicomError(f"{keyword} is not an integer") from exc


def check_dataset(ds: Dataset, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> HeaderFacts:
    """Refuse what cannot be assessed, from the header alone; return the header facts."""
    if _PIXEL_DATA not in ds:
        if any(tag in ds for tag in _FLOAT_PIXEL_DATA):
            raise UnsupportedImageError(
                "float pixel data (parametric maps) cannot be assessed; send a radiograph"
            )
        raise NoPixelDataError(
            "the DICOM dataset has no pixel data (e.g. a report or presentation state); "
            "send the image itself"
        )
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    frames = _int(ds, "NumberOfFrames", 1) or 1
    if rows <= 0 or columns <= 0:
        raise CorruptDicomError(f"the header declares an empty image ({rows} x {columns})")
    declared = rows * columns * frames
    if declared > max_pixels:
        raise PixelBudgetError(
            f"the header declares {rows} x {columns} pixels"
            + (f" x {frames} frames" if frames > 1 else "")
            + f" = {declared:,}, over the budget of {max_pixels:,} pixels; "
            "send a smaller image or raise the pixel budget"
        )
    if frames > 1:
        raise MultiFrameError(
            f"the image has {frames} frames; a radiograph is one frame: send one frame"
        )
    samples = _int(ds, "SamplesPerPixel", 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if samples != 1 or photometric not in _GRAYSCALE:
        raise ColourImageError(
            f"the image is colour ({photometric or 'unknown'}, {samples} samples per pixel); "
            "chest radiographs must be MONOCHROME1 or MONOCHROME2"
        )
    bits_allocated = _int(ds, "BitsAllocated")
    bits_stored = _int(ds, "BitsStored", bits_allocated)
    representation = _int(ds, "PixelRepresentation", 0)
    if bits_allocated not in (8, 16, 32) or not 1 <= bits_stored <= bits_allocated:
        raise UnsupportedImageError(
            f"unsupported pixel layout: {bits_stored} bits stored in {bits_allocated} "
            "allocated; expected 8, 16 or 32 bits allocated"
        )
    if representation not in (0, 1):
        raise CorruptDicomError("PixelRepresentation must be 0 or 1")
    tsyntax = UID(str(ds.file_meta.TransferSyntaxUID))
    check_decodable(tsyntax)
    # an empty element reads as None, a mangled VR as numbers: neither is pixel data
    if not isinstance(ds.PixelData, bytes) or not ds.PixelData:
        raise CorruptDicomError("the Pixel Data element is empty or not binary data")
    if not tsyntax.is_compressed:
        expected = rows * columns * bits_allocated // 8
        actual = len(ds.PixelData)
        if actual < expected:
            raise TruncatedDicomError(
                f"the pixel data hold {actual:,} bytes where {rows} x {columns} x "
                f"{bits_allocated} bits need {expected:,}: the file is truncated"
            )
    else:  # a decoder sizes its output from the codestream, not from this header
        check_frame(
            ds.PixelData, tsyntax, rows=rows, columns=columns, bits_allocated=bits_allocated
        )
    return header_facts(ds, tsyntax)


def check_decodable(tsyntax: UID) -> None:
    name = tsyntax.name if tsyntax.is_transfer_syntax else "an unknown transfer syntax"
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise UnsupportedTransferSyntaxError(
            f"pixel data in {name} ({tsyntax}) cannot be decoded here; send the image "
            "uncompressed, JPEG, JPEG-LS, JPEG 2000, HTJ2K or RLE"
        ) from None
    if not decoder.is_available:
        raise UnsupportedTransferSyntaxError(
            f"no installed decoder handles {name} ({tsyntax}); reinstall with `make install`"
        )


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFLATE_MARGIN_BYTES",
    "DecodedImage",
    "HeaderFacts",
    "check_dataset",
    "parse_dataset",
    "read_dicom",
    "read_header",
]
