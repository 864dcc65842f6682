"""Seed files for decoder fuzzing: one or more grayscale single-frame DICOM files for every
transfer syntax in :data:`imaging.decoders.DECODABLE_TRANSFER_SYNTAXES`.

Real files (the SIIM-ACR chest in ``tests/data/real-dicom/`` and pydicom-data's test files)
and small made ones (96 x 128 and 77 x 101 pixels, so a fuzz case costs milliseconds): made
with ``tests/conftest.py``'s ``build_dataset``, pydicom's encoders (``ds.compress``: RLE,
JPEG-LS, JPEG 2000) and imagecodecs (JPEG baseline / extended / lossless with libjpeg-turbo,
HTJ2K with OpenJPH, encapsulated by hand as ``benchmarks/bench_j2k_reduce.py`` does).
The made files carry what the structure-aware mutators need: a VOI LUT Sequence, a window,
rescale values and a nested sequence of undefined length.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom.uid as uids
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence

from tests.conftest import SIIM_FILE, build_dataset, pydicom_file

#: codec families: which codestream mutators apply
NATIVE, DEFLATE, RLE, JPEG, JPEGLS, J2K = "native", "deflate", "rle", "jpeg", "jpegls", "j2k"

CODEC_OF: dict[str, str] = {
    uids.ExplicitVRLittleEndian: NATIVE,
    uids.ImplicitVRLittleEndian: NATIVE,
    uids.ExplicitVRBigEndian: NATIVE,
    uids.DeflatedExplicitVRLittleEndian: DEFLATE,
    uids.RLELossless: RLE,
    uids.JPEGBaseline8Bit: JPEG,
    uids.JPEGExtended12Bit: JPEG,
    uids.JPEGLossless: JPEG,
    uids.JPEGLosslessSV1: JPEG,
    uids.JPEGLSLossless: JPEGLS,
    uids.JPEGLSNearLossless: JPEGLS,
    uids.JPEG2000Lossless: J2K,
    uids.JPEG2000: J2K,
    uids.HTJ2KLossless: J2K,
    uids.HTJ2KLosslessRPCL: J2K,
    uids.HTJ2K: J2K,
}

#: real files used as seeds: pydicom / pydicom-data test files, all grayscale, one frame
PYDICOM_SEEDS: tuple[str, ...] = (
    "MR_small.dcm",  # explicit VR LE, 64 x 64 signed 16-bit
    "CT_small.dcm",  # explicit VR LE, 128 x 128 signed, rescale
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",  # deflated, 512 x 512 8-bit
    "MR_small_RLE.dcm",
    "JPGExtended.dcm",  # 12-bit JPEG extended, 1024 x 256
    "JPEG-LL.dcm",  # JPEG lossless process 14, signed 16-bit
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEGLSNearLossless_16.dcm",
    "JPEG2000.dcm",  # NM, signed 16-bit, lossy
    "MR_small_jp2klossless.dcm",
    "693_J2KI.dcm",  # 512 x 512 lossy, signed 14-bit
)


@dataclass(frozen=True)
class Seed:
    """One seed file: ``codec`` is the family its pixel data belong to."""

    name: str
    transfer_syntax: str  # UID
    data: bytes

    @property
    def codec(self) -> str:
        return CODEC_OF[self.transfer_syntax]

    @property
    def syntax_name(self) -> str:
        return uids.UID(self.transfer_syntax).name


def phantom(rows: int, columns: int, bits: int) -> npt.NDArray[np.uint16]:
    """A textured test image: a lit gradient, a dense disk, ribs and noise, ``bits`` deep."""
    rng = np.random.default_rng(20240611)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float64)
    image = 0.15 + 0.5 * (x / columns) * np.sqrt(y / rows)
    disk = (y - rows * 0.45) ** 2 + (x - columns * 0.6) ** 2 < (min(rows, columns) * 0.22) ** 2
    image += 0.25 * disk + 0.08 * (np.sin(y / 5.0) > 0.6)
    image += rng.normal(0.0, 0.02, image.shape)
    top = (1 << bits) - 1
    return np.asarray(np.clip(np.rint(image * top), 0, top), dtype=np.uint16)


def _decorate(ds: Dataset) -> None:
    """Elements the structure-aware mutators target: VOI LUT, window, rescale, a sequence
    and an item of undefined length."""
    ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    voi = Dataset()
    voi.LUTDescriptor = [256, 0, 12]
    voi.LUTData = [int(v) for v in np.linspace(0, 4095, 256).round()]
    voi["LUTData"].VR = "US"
    ds.VOILUTSequence = Sequence([voi])
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "RPID2", "RADLEX", "CXR"
    code.is_undefined_length_sequence_item = True
    ds.ProcedureCodeSequence = Sequence([code])
    ds["ProcedureCodeSequence"].is_undefined_length = True


def _save(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _made(pixels: npt.NDArray[Any], tsyntax: str, bits: int, *, decorate: bool = True) -> Dataset:
    ds = build_dataset(pixels, bits_stored=bits, transfer_syntax=tsyntax)
    if tsyntax == uids.ExplicitVRBigEndian:  # pydicom writes OW values as given: swap them
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
    if decorate:
        _decorate(ds)
    return ds


def _encapsulated(ds: Dataset, frame: bytes, tsyntax: str) -> bytes:
    ds.PixelData = encapsulate([frame], has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = uids.UID(tsyntax)
    return _save(ds)


def _made_seeds() -> list[Seed]:
    import imagecodecs

    out: list[Seed] = []
    p12 = phantom(96, 128, 12)
    p8 = (p12 >> 4).astype(np.uint8)
    for ts in (
        uids.ExplicitVRLittleEndian,
        uids.ImplicitVRLittleEndian,
        uids.ExplicitVRBigEndian,
        uids.DeflatedExplicitVRLittleEndian,
    ):
        out.append(Seed(f"made-{uids.UID(ts).keyword}", ts, _save(_made(p12, ts, 12))))
    for ts, kwargs in (
        (uids.RLELossless, {}),
        (uids.JPEGLSLossless, {}),
        (uids.JPEGLSNearLossless, {"jls_error": 2}),
        (uids.JPEG2000Lossless, {}),
        (uids.JPEG2000, {"j2k_cr": [10]}),
    ):
        ds = _made(p12, uids.ExplicitVRLittleEndian, 12)
        ds.compress(ts, **kwargs)
        out.append(Seed(f"made-{uids.UID(ts).keyword}", ts, _save(ds)))
    odd = phantom(77, 101, 12)  # sizes 2**r does not divide: the reduced grid's edge cells
    ds = _made(odd, uids.ExplicitVRLittleEndian, 12, decorate=False)
    ds.compress(uids.JPEG2000Lossless)
    out.append(Seed("made-JPEG2000Lossless-odd", uids.JPEG2000Lossless, _save(ds)))
    jpeg_frames = (
        (uids.JPEGBaseline8Bit, p8, 8, imagecodecs.jpeg8_encode(p8, level=90)),
        (uids.JPEGExtended12Bit, p12, 12, imagecodecs.jpeg8_encode(p12, bitspersample=12)),
        (
            uids.JPEGLossless,
            p12,
            12,
            imagecodecs.jpeg8_encode(p12, lossless=True, predictor=7, bitspersample=12),
        ),
        (
            uids.JPEGLosslessSV1,
            p12,
            12,
            imagecodecs.jpeg8_encode(p12, lossless=True, predictor=1, bitspersample=12),
        ),
    )
    for ts, pixels, bits, frame in jpeg_frames:
        ds = _made(pixels, uids.ExplicitVRLittleEndian, bits)
        out.append(Seed(f"made-{uids.UID(ts).keyword}", ts, _encapsulated(ds, bytes(frame), ts)))
    for ts, reversible in (
        (uids.HTJ2KLossless, True),
        (uids.HTJ2KLosslessRPCL, True),  # OpenJPH writes RPCL progression by default
        (uids.HTJ2K, False),
    ):
        frame = bytes(imagecodecs.htj2k_encode(p12, reversible=reversible))
        ds = _made(p12, uids.ExplicitVRLittleEndian, 12)
        out.append(Seed(f"made-{uids.UID(ts).keyword}", ts, _encapsulated(ds, frame, ts)))
    return out


def _transfer_syntax_of(data: bytes) -> str:
    from pydicom import dcmread

    return str(dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID)


@lru_cache(maxsize=1)
def seeds() -> tuple[Seed, ...]:
    """Every seed, real ones first (built once per process, ~1 s)."""
    real = [Seed("siim-acr-chest", uids.JPEGBaseline8Bit, SIIM_FILE.read_bytes())]
    for name in PYDICOM_SEEDS:
        data = pydicom_file(name)
        real.append(Seed(f"pydicom-{name.removesuffix('.dcm')}", _transfer_syntax_of(data), data))
    return (*real, *_made_seeds())
