"""Pixel decoding with pydicom's plugins, fastest first, falling back on failure.

Only plugins whose licences fit Apache-2.0 are installed: pylibjpeg with
pylibjpeg-openjpeg (JPEG 2000, HTJ2K; MIT / BSD-2) and pylibjpeg-rle (RLE; MIT), pyjpegls
(JPEG-LS; MIT / BSD-3), GDCM (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000; BSD)
and Pillow (JPEG baseline/extended 8-bit, JPEG 2000; MIT-CMU). pylibjpeg-libjpeg is GPL-3
and deliberately absent: GDCM decodes the syntaxes it would.

The order below comes from ``benchmarks/bench_decode.py`` (see the README table): the
first plugin is the fastest on this machine; the others are tried when it fails on a
given file (Pillow, for one, cannot decode 12-bit JPEG).
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import threading
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom.uid as uids
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, generate_uid

from imaging.errors import (
    CorruptDicomError,
    UnsupportedImageError,
    UnsupportedTransferSyntaxError,
)
from imaging.header import HeaderFacts

logger = logging.getLogger(__name__)


class _PluginMemoryErrors(logging.Handler):
    """Notes, per thread, that a pydicom pixel plugin ran out of memory.

    pydicom catches every exception of a plugin, MemoryError included, logs it (with
    ``exc_info``) on its ``pydicom`` logger and raises one RuntimeError for all; the log
    record is the only place the MemoryError survives. This handler sees those records
    (and prints nothing: the logger does not propagate), so :func:`decode_pixels` can tell
    "out of memory" (the decode worker's limit did its job) from "corrupt data".
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and isinstance(record.exc_info[1], MemoryError):
            self.local.seen = True

    def reset(self) -> None:
        self.local.seen = False

    def seen(self) -> bool:
        return bool(getattr(self.local, "seen", False))


# pydicom logs a full traceback at ERROR for every plugin that fails before another one
# succeeds; we report failures ourselves (one line, no traceback), so its records go to
# the memory-error watch above and nowhere else.
_memory_errors = _PluginMemoryErrors()
_pydicom_logger = logging.getLogger("pydicom")
_pydicom_logger.setLevel(logging.ERROR)
_pydicom_logger.propagate = False
_pydicom_logger.addHandler(_memory_errors)

#: pseudo-plugin: GDCM called directly (see ``_decode_gdcm_direct``)
GDCM_DIRECT = "gdcm-direct"

#: transfer syntax -> plugins in order of preference (fastest first)
PLUGIN_PREFERENCE: dict[str, tuple[str, ...]] = {
    uids.RLELossless: ("pylibjpeg", "pydicom"),
    uids.JPEGBaseline8Bit: ("pillow", "gdcm"),
    uids.JPEGExtended12Bit: ("pillow", "gdcm", GDCM_DIRECT),
    uids.JPEGLossless: ("gdcm",),
    uids.JPEGLosslessSV1: ("gdcm",),
    uids.JPEGLSLossless: ("pyjpegls", "gdcm"),
    uids.JPEGLSNearLossless: ("pyjpegls", "gdcm"),
    uids.JPEG2000Lossless: ("pylibjpeg", "gdcm", "pillow"),
    uids.JPEG2000: ("pylibjpeg", "gdcm", "pillow"),
    uids.HTJ2KLossless: ("pylibjpeg",),
    uids.HTJ2KLosslessRPCL: ("pylibjpeg",),
    uids.HTJ2K: ("pylibjpeg",),
}


#: every transfer syntax :func:`imaging.dicom.read_dicom` can decode: pydicom's native ones
#: (uncompressed, deflated, big endian) and those with a plugin above. What a receiver
#: (STOW-RS, the C-STORE SCP) accepts.
DECODABLE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    uids.ExplicitVRLittleEndian,
    uids.ImplicitVRLittleEndian,
    uids.DeflatedExplicitVRLittleEndian,
    uids.ExplicitVRBigEndian,
    *PLUGIN_PREFERENCE,
)


def plugin_order(tsyntax: str) -> list[str]:
    """Installed plugins for ``tsyntax`` in preference order ("" = pydicom's native)."""
    decoder = get_decoder(uids.UID(tsyntax))
    available = list(decoder.available_plugins)
    if not available:  # native (uncompressed / deflate / big endian): no plugin choice
        return [""]
    if "gdcm" in available:
        available.append(GDCM_DIRECT)
    preferred = [p for p in PLUGIN_PREFERENCE.get(tsyntax, ()) if p in available]
    return preferred + [p for p in available if p not in preferred and p != GDCM_DIRECT]


#: JPEG and JPEG-LS transfer syntaxes: GDCM sees their frames only after ``_gdcm_refusal``
_JPEG_SYNTAXES = frozenset(
    {uids.JPEGBaseline8Bit, uids.JPEGExtended12Bit, uids.JPEGLossless, uids.JPEGLosslessSV1,
     uids.JPEGLSLossless, uids.JPEGLSNearLossless}
)  # fmt: skip


def _sof_of(frame: bytes) -> tuple[int, int]:
    """``(marker, precision)`` of the first SOFn / SOF55 of a JPEG frame whose header
    :func:`imaging.codestreams.jpeg_info` has already walked (in check_dataset)."""
    at = 2
    while at + 4 < len(frame):
        marker = frame[at + 1]
        if marker == 0xFF:
            at += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            at += 2
            continue
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            return marker, frame[at + 4]
        at += 2 + int.from_bytes(frame[at + 2 : at + 4], "big")
    raise ValueError("no SOF in the JPEG frame")


def _gdcm_refusal(ds: Dataset, facts: HeaderFacts) -> str | None:
    """Why GDCM must not see this image, or None: the JPEG frames on which it kills the
    whole process.

    GDCM asserts (an uncaught C++ exception: std::terminate) that JPEG (not JPEG-LS) data
    have 8 or 16 bits allocated, and that 8-bit JPEG data have Bits Stored == Bits
    Allocated == the frame's precision, which valid 2-7-bit lossless files break too
    (decoder fuzzing, issue #16). (Precisions a JPEG process does not allow are already
    refused by :func:`imaging.codestreams.jpeg_info`.)"""
    if facts.transfer_syntax_uid not in _JPEG_SYNTAXES:
        return None
    jpeg_ls = facts.transfer_syntax_uid in (uids.JPEGLSLossless, uids.JPEGLSNearLossless)
    if not jpeg_ls and facts.bits_allocated not in (8, 16):
        return f"{facts.bits_allocated} bits allocated"
    if facts.bits_allocated != 8:
        return None
    try:
        _, precision = _sof_of(next(generate_frames(ds.PixelData, number_of_frames=1)))
    except (ValueError, StopIteration):
        return "no frame header"
    if (facts.bits_stored, precision) != (8, 8):
        return f"{precision}-bit samples in {facts.bits_stored} of 8 bits stored"
    return None


def _minimal_file(ds: Dataset, facts: HeaderFacts) -> bytes:
    """The image of ``ds`` as a small clean Part 10 file for GDCM: the checked header facts
    and the first frame, re-encapsulated. GDCM parses the file it is given itself: on the
    upload's own header it aborted the process (an element whose VR it finds incompatible
    with its dictionary: std::terminate; decoder fuzzing, issue #16)."""
    out = Dataset()
    out.file_meta = FileMetaDataset()
    out.file_meta.TransferSyntaxUID = UID(facts.transfer_syntax_uid)
    out.SOPClassUID = out.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    out.SOPInstanceUID = out.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out.Rows, out.Columns, out.SamplesPerPixel = facts.rows, facts.columns, 1
    out.PhotometricInterpretation = facts.photometric_interpretation
    out.BitsAllocated, out.BitsStored = facts.bits_allocated, facts.bits_stored
    out.HighBit, out.PixelRepresentation = facts.bits_stored - 1, facts.pixel_representation
    out.PixelData = encapsulate([next(generate_frames(ds.PixelData, number_of_frames=1))])
    out["PixelData"].VR = "OB"
    out["PixelData"].is_undefined_length = True
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _decode_gdcm_direct(data: bytes) -> npt.NDArray[Any]:
    """Decode a single-frame grayscale file with GDCM itself, bypassing pydicom's plugin.

    pydicom's GDCM plugin refuses 12-bit JPEG Extended (process 4), yet python-gdcm 3.2
    decodes it correctly (it first tries its 16-bit codec, prints "Unsupported JPEG data
    precision 12" to native stderr, then retries with its 12-bit codec). Checked against
    pydicom's reference values for JPGExtended.dcm in tests/imaging/test_dicom_real.py.
    GDCM reads from a path, so the bytes go through a private temporary file.
    """
    import gdcm

    fd, path = tempfile.mkstemp(suffix=".dcm")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        reader = gdcm.ImageReader()
        reader.SetFileName(path)
        if not reader.Read():
            raise RuntimeError("GDCM could not read the file")
        image = reader.GetImage()
        fmt = image.GetPixelFormat()
        dtype = {
            (8, 0): np.uint8,
            (8, 1): np.int8,
            (16, 0): np.uint16,
            (16, 1): np.int16,
        }.get((fmt.GetBitsAllocated(), fmt.GetPixelRepresentation()))
        if dtype is None or fmt.GetSamplesPerPixel() != 1:
            raise RuntimeError("GDCM decoded an unsupported pixel format")
        buffer = image.GetBuffer().encode("utf-8", "surrogateescape")
        rows, columns = image.GetDimension(1), image.GetDimension(0)
        return np.frombuffer(buffer, dtype=dtype).reshape(rows, columns).copy()
    finally:
        os.unlink(path)


def decode_pixels(
    ds: Dataset, facts: HeaderFacts, data: bytes, *, plugin: str | None = None
) -> npt.NDArray[Any]:
    """Decode the single frame of ``ds`` (parsed from ``data``) to stored values.

    Returns shape ``(rows, columns)``.

    Integer dtype as decoded (uint8/uint16/int16/...). Unused high bits of unsigned data
    (old files hid overlays there) are cleared. Raises :class:`CorruptDicomError` when no
    plugin can decode the data.

    ``ds`` must have passed :func:`imaging.dicom.check_dataset`, which checks the pixel
    budget and, for compressed data, that the codestream agrees with the header
    (:func:`imaging.codestreams.check_frame`) before any plugin here allocates. Pixel data
    longer than the header's frame are ignored, not decoded.
    """
    tsyntax = facts.transfer_syntax_uid
    installed = plugin_order(tsyntax)
    candidates = [plugin] if plugin else installed
    if plugin and plugin not in installed:
        raise UnsupportedTransferSyntaxError(
            f"decoder plugin {plugin!r} is not installed for {facts.transfer_syntax_name}"
        )
    failures: list[str] = []
    refusal = _gdcm_refusal(ds, facts)
    for name in candidates:
        if refusal is not None and name in ("gdcm", GDCM_DIRECT):
            failures.append(f"{name}: not given {refusal}")
            continue
        _memory_errors.reset()
        try:
            if name == GDCM_DIRECT:
                arr = _decode_gdcm_direct(_minimal_file(ds, facts))
            else:
                # Only the frames the header declares: by default pydicom returns every
                # whole frame the buffer holds, so trailing bytes after a single 64x64
                # frame (90 MB of them) became an array of 11,521 frames.
                ds.pixel_array_options(decoding_plugin=name, allow_excess_frames=False)
                arr = ds.pixel_array
        except BaseException as exc:  # each plugin raises its own types on bad data
            # pylibjpeg-rle (Rust, pyo3) panics on some corrupt segments: pyo3's
            # PanicException derives from BaseException, not Exception. Anything else
            # outside Exception (KeyboardInterrupt, SystemExit) is not the data's fault.
            if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                raise
            if isinstance(exc, MemoryError) or _memory_errors.seen():
                # out of memory is not "this plugin cannot decode it": an image that
                # exhausts one decoder's budget is not given to the next one
                raise MemoryError(f"decoder plugin {name or 'native'} ran out of memory") from None
            failures.append(f"{name or 'native'}: {type(exc).__name__}")
            logger.info(
                "decoder failed",
                extra={
                    "plugin": name or "native",
                    "transfer_syntax": tsyntax,
                    "error": type(exc).__name__,
                },
            )
            continue
        return _check_and_mask(arr, facts)
    if refusal is not None and all(": not given " in f for f in failures):
        raise UnsupportedImageError(
            f"{facts.transfer_syntax_name} pixel data with {refusal} cannot be decoded here "
            "(the only installed decoder for it, GDCM, aborts on such data); send the image "
            "uncompressed or in another transfer syntax"
        )
    raise CorruptDicomError(
        f"the {facts.transfer_syntax_name} pixel data could not be decoded (corrupt or "
        f"truncated; tried {', '.join(failures)})"
    )


def _check_and_mask(arr: npt.NDArray[Any], facts: HeaderFacts) -> npt.NDArray[Any]:
    if arr.shape != (facts.rows, facts.columns):
        raise CorruptDicomError(
            f"decoded pixel data have shape {arr.shape}, the header says "
            f"{facts.rows} x {facts.columns}"
        )
    if arr.dtype.kind not in "ui":
        raise CorruptDicomError(f"decoded pixel data have non-integer type {arr.dtype}")
    # Only native (uncompressed) data can carry overlay bits above Bits Stored; a lossy
    # decoder's overshoot past the top value is clipped by the display table instead of
    # being wrapped to black here.
    compressed = UID(facts.transfer_syntax_uid).is_compressed
    if not compressed and arr.dtype.kind == "u" and facts.bits_stored < arr.dtype.itemsize * 8:
        if not arr.flags.writeable:
            arr = arr.copy()
        np.bitwise_and(arr, (1 << facts.bits_stored) - 1, out=arr)
    return arr
