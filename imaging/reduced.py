"""JPEG 2000 / HTJ2K decoded at a reduced resolution (the codestream's wavelet levels).

A JPEG 2000 codestream with ``L`` decomposition levels holds the image at ``L + 1``
resolutions: decoding only the low-pass (LL) band of level ``r`` gives an image of
``ceil(rows / 2**r) x ceil(columns / 2**r)`` and skips the entropy decoding and the inverse
transform of the finer levels (about 4x less work per level). A model that sees the image
at ``R`` pixels needs no level finer than the one that still covers ``R``:
:func:`choose_reduction` picks it and :func:`decode_reduced_frame` decodes it.

Decoder: Pillow's JPEG 2000 plugin (its bundled OpenJPEG >= 2.5, which reads HTJ2K too),
the only installed decoder that exposes OpenJPEG's ``reduce`` (pylibjpeg-openjpeg 2.6 and
pydicom's GDCM plugin decode the full resolution only). Pillow scales samples of
precision ``p`` to its mode's width (``I;16``: ``v << (16 - p)``, ``L``: ``v << (8 - p)``);
:func:`decode_reduced_frame` shifts them back, so at ``r = 0`` the result is bit-exact
against pylibjpeg's full decode (``tests/imaging/test_reduced_decode.py``).

Threads: Pillow has no thread option, but the OpenJPEG it bundles reads the environment
variable ``OPJ_NUM_THREADS`` (a number or ``ALL_CPUS``) each time it creates a decoder, and
so does pylibjpeg-openjpeg's; :func:`configure_decoder_threads` sets it once, at start-up,
before any decoding thread runs (``setenv`` is not safe against concurrent ``getenv``).

Pixel convention of a reduced image (what :func:`imaging.dicom.read_dicom` returns with
``reduction = 2**r``): ``m = ceil(N / 2**r)`` samples per axis of ``N`` original pixels;
sample ``i`` stands for original pixels ``[i * N / m, (i + 1) * N / m)`` (edge-based
coordinates; ``[2**r * i, 2**r * (i + 1))`` when ``2**r`` divides ``N``), the convention
of area resizing from ``N`` to ``m``, and is ~ their mean. The codestream's LL sample
``i`` is not centred there: the 5/3 and 9/7 low-pass filters are centred on original
pixel ``2**r * i``, ``(2**r - 1) / 2`` original pixels up and left of the area centre,
and the last LL sample covers a partial cell when ``2**r`` does not divide ``N``.
:func:`align_to_area_grid` resamples the reduced display pixels (bilinear) onto the area
centres; without it the model input was off by up to 0.17 (display units) at 512 px,
with it by under 0.05 (``benchmarks/bench_j2k_reduce.py``). The display chain is applied to the
reduced stored values, i.e. before averaging where the full path averages after it:
identical for a linear chain inside the window, slightly different where the window clips.

Anything unexpected (a JP2 or codestream this module does not understand, signed data,
more than 16 bits, sub-sampled components, image offsets, a decoder error, an output of
the wrong size) returns None from :func:`decode_reduced`, and the caller decodes the full
image as before.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pydicom.uid as uids
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from imaging.header import HeaderFacts

logger = logging.getLogger(__name__)

#: transfer syntaxes whose frames are JPEG 2000 codestreams (Part 1 or Part 15 / HTJ2K)
J2K_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    {
        uids.JPEG2000Lossless,
        uids.JPEG2000,
        uids.HTJ2KLossless,
        uids.HTJ2KLosslessRPCL,
        uids.HTJ2K,
    }
)

#: a reduction ``r`` is taken only while ``min(rows, columns) / 2**r >= min_side * MARGIN``.
#: 1.0: the reduced image is never smaller than the letterbox content box (whose longer
#: side is ``R``), so it is only ever shrunk (area) to the box, never enlarged. The model
#: input then differs from the full decode's by at most the tolerance measured in
#: ``benchmarks/bench_j2k_reduce.py`` (see :data:`MAX_ABS_TOLERANCE`).
MARGIN = 1.0

#: tolerance on the model input's display values ([0, 1] scale, i.e. model input / 4):
#: max and mean absolute difference between full and reduced decode, asserted in tests.
MAX_ABS_TOLERANCE = 0.08
MEAN_ABS_TOLERANCE = 0.005

_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_COD = 0xFF52
_SOT = 0xFF90
_SOD = 0xFF93


@dataclass(frozen=True)
class Codestream:
    """What the main header of a JPEG 2000 codestream says (SIZ and COD markers)."""

    rows: int
    columns: int
    components: int
    precision: int
    signed: bool
    levels: int  # decomposition levels of the main COD marker
    plain_grid: bool  # no image/tile offsets that shift the reduced grid, no sub-sampling


def codestream_of(frame: bytes) -> bytes:
    """The codestream in ``frame``: the frame itself, or a JP2 file's ``jp2c`` box."""
    if frame.startswith(_SOC_SIZ):
        return frame
    if frame.startswith(_JP2_SIGNATURE):
        at = frame.find(b"jp2c" + _SOC_SIZ)
        if at >= 0:
            return frame[at + 4 :]
    raise ValueError("not a JPEG 2000 codestream or JP2 file")


def parse_codestream(codestream: bytes) -> Codestream:
    """Read SIZ and the main-header COD of ``codestream`` (raises ``ValueError``)."""
    if not codestream.startswith(_SOC_SIZ):
        raise ValueError("no SOC/SIZ at the start of the codestream")
    try:
        lsiz = struct.unpack_from(">H", codestream, 4)[0]
        (xsiz, ysiz, xosiz, yosiz, _xt, _yt, xtosiz, ytosiz, csiz) = struct.unpack_from(
            ">IIIIIIIIH", codestream, 8
        )
        ssiz, xrsiz, yrsiz = struct.unpack_from(">BBB", codestream, 42)
        subsampled = any(
            struct.unpack_from(">BBB", codestream, 42 + 3 * c)[1:] != (1, 1) for c in range(csiz)
        )
        levels = -1
        at = 4 + lsiz
        while at + 4 <= len(codestream):
            marker, length = struct.unpack_from(">HH", codestream, at)
            if marker in (_SOT, _SOD):
                break
            if marker == _COD:
                levels = codestream[at + 9]  # Lcod(2) Scod(1) SGcod(4), then SPcod[0]
                break
            at += 2 + length
    except (struct.error, IndexError) as exc:
        raise ValueError("truncated JPEG 2000 main header") from exc
    if levels < 0:
        raise ValueError("no COD marker in the main header")
    return Codestream(
        rows=ysiz - yosiz,
        columns=xsiz - xosiz,
        components=csiz,
        precision=(ssiz & 0x7F) + 1,
        signed=bool(ssiz & 0x80),
        levels=levels,
        plain_grid=(xosiz, yosiz, xtosiz, ytosiz) == (0, 0, 0, 0)
        and (xrsiz, yrsiz) == (1, 1)
        and not subsampled,
    )


def choose_reduction(rows: int, columns: int, min_side: int, *, levels: int = 32) -> int:
    """The exponent ``r``: the largest with ``min(rows, columns) / 2**r >= min_side * MARGIN``.

    Capped by the codestream's decomposition ``levels``; 0 means the full resolution.
    Also capped where Pillow's idea of the reduced size differs from OpenJPEG's: Pillow
    (13) sizes its buffer as ``round(N / 2**r)`` (half up), OpenJPEG writes
    ``ceil(N / 2**r)``, and where they differ (``N % 4 == 1`` at ``r = 2``, for example)
    the load fails after decoding, which would cost a failed try plus the full decode.
    """
    if min_side < 1:
        raise ValueError(f"min_side must be positive, got {min_side}")
    shorter = min(rows, columns)
    r = 0
    while (
        r < levels
        and shorter / 2 ** (r + 1) >= min_side * MARGIN
        and _pillow_size_agrees(rows, r + 1)
        and _pillow_size_agrees(columns, r + 1)
    ):
        r += 1
    return r


def _pillow_size_agrees(n: int, r: int) -> bool:
    """Pillow's reduced size ``int((n + 2**(r-1)) / 2**r)`` equals OpenJPEG's ceil."""
    factor = 1 << r
    return (n + factor // 2) // factor == -(-n // factor)


def configure_decoder_threads(threads: int | str | None = None) -> str:
    """Let OpenJPEG (Pillow's and pylibjpeg's) decode with ``threads`` threads.

    Sets ``OPJ_NUM_THREADS`` unless the environment already has it (an operator's choice
    wins); ``None`` means the CPUs this process may use. Call once at start-up, before
    decoding threads run. Returns the value in force. Threads shorten one decode; under
    full load (every core busy with requests) they add nothing.
    """
    value = str(threads) if threads is not None else str(len(os.sched_getaffinity(0)))
    return os.environ.setdefault("OPJ_NUM_THREADS", value)


def decode_reduced_frame(frame: bytes, reduction: int) -> npt.NDArray[Any]:
    """Decode a single-component JPEG 2000 / HTJ2K ``frame`` at ``2**reduction`` less.

    Returns the stored values (uint16 for precision 9-16, uint8 for 1-8), shape
    ``(ceil(rows / 2**r), ceil(columns / 2**r))``. Raises ``ValueError`` for what this
    module does not handle (see the module docstring) and whatever Pillow raises on a
    corrupt codestream.
    """
    from PIL import Image

    info = parse_codestream(codestream_of(frame))
    if info.components != 1 or info.signed or info.precision > 16 or not info.plain_grid:
        raise ValueError("not an unsigned single-component image on a plain grid")
    if not 0 <= reduction <= info.levels:
        raise ValueError(f"reduction {reduction} outside 0..{info.levels} levels")
    image: Any = Image.open(io.BytesIO(frame), formats=["JPEG2000"])
    image.reduce = reduction
    image.load()
    factor = 1 << reduction
    expected = (math.ceil(info.rows / factor), math.ceil(info.columns / factor))
    if image.mode == "I;16":
        arr = np.asarray(image, dtype=np.uint16)
        shift = 16 - info.precision
    elif image.mode == "L":
        arr = np.asarray(image, dtype=np.uint8)
        shift = 8 - info.precision
    else:
        raise ValueError(f"unexpected Pillow mode {image.mode}")
    if arr.shape != expected:
        raise ValueError(f"decoded {arr.shape}, expected {expected}")
    if shift:
        arr = np.right_shift(arr, shift)  # Pillow's v << shift, undone exactly
    return arr


def align_to_area_grid(
    pixels: npt.NDArray[np.float32], factor: int, grid: tuple[int, int]
) -> npt.NDArray[np.float32]:
    """Move reduced display ``pixels`` (``factor = 2**r``) of the original ``grid``
    ``(rows, columns)`` from the wavelet low-pass centres onto an area grid.

    Per axis, with ``N`` original and ``m = ceil(N / factor)`` reduced samples: output ``i``
    is the value at original position ``(i + 0.5) * N / m`` (the centre of cell
    ``[i * N / m, (i + 1) * N / m)``, what area resizing from ``N`` to ``m`` would use),
    interpolated (bilinear, edges replicated) between the low-pass samples, whose ``k``-th
    is centred at ``factor * k + 0.5``. When ``factor`` divides ``N`` that is a shift by
    ``(factor - 1) / (2 * factor)`` reduced pixels; when it does not, it also stretches the
    last, partial cell over the whole axis, so a later area resize of the ``m`` samples to
    the letterbox covers exactly the ``N`` original pixels (no drift of up to half a cell
    across the image). ``factor`` 1 returns ``pixels`` unchanged. See the module docstring.
    """
    if factor == 1:
        return pixels
    m_rows, m_columns = pixels.shape
    rows, columns = grid

    def axis(n: int, m: int) -> tuple[float, float]:
        cell = n / m
        return cell / factor, (0.5 * cell - 0.5) / factor

    sy, ty = axis(rows, m_rows)
    sx, tx = axis(columns, m_columns)
    affine = np.array([[sx, 0.0, tx], [0.0, sy, ty]], dtype=np.float64)
    out = cv2.warpAffine(
        pixels,
        affine,
        (m_columns, m_rows),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return np.asarray(out, dtype=np.float32)


@dataclass(frozen=True)
class ReducedStored:
    """Reduced stored values and their factor ``2**r`` (per axis) against the header grid."""

    stored: npt.NDArray[Any]
    factor: int


def decode_reduced(ds: Dataset, facts: HeaderFacts, min_side: int) -> ReducedStored | None:
    """The single frame of ``ds`` decoded at the coarsest level that covers ``min_side``.

    None when the transfer syntax is not JPEG 2000 / HTJ2K, when no level can be skipped,
    and on any failure (logged at debug, without patient data): the caller then decodes
    the full image as before.
    """
    if facts.transfer_syntax_uid not in J2K_TRANSFER_SYNTAXES or facts.pixel_representation:
        return None
    if choose_reduction(facts.rows, facts.columns, min_side) == 0:
        return None
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        info = parse_codestream(codestream_of(frame))
        if (info.rows, info.columns) != (facts.rows, facts.columns):
            raise ValueError("codestream size differs from the header's")
        r = choose_reduction(facts.rows, facts.columns, min_side, levels=info.levels)
        if r == 0:
            return None
        stored = decode_reduced_frame(frame, r)
    except Exception as exc:  # any failure: full decode instead
        logger.debug(
            "reduced JPEG 2000 decode failed; decoding the full image",
            extra={"transfer_syntax": facts.transfer_syntax_uid, "error": type(exc).__name__},
        )
        return None
    return ReducedStored(stored=stored, factor=1 << r)


__all__ = [
    "J2K_TRANSFER_SYNTAXES",
    "MARGIN",
    "MAX_ABS_TOLERANCE",
    "MEAN_ABS_TOLERANCE",
    "Codestream",
    "ReducedStored",
    "align_to_area_grid",
    "choose_reduction",
    "codestream_of",
    "configure_decoder_threads",
    "decode_reduced",
    "decode_reduced_frame",
    "parse_codestream",
]
