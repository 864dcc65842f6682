"""Write grayscale radiographs as real DICOM Part 10 files.

``build_dataset`` makes an uncompressed (Explicit VR Little Endian) CR or DX dataset from a
2-D ``uint16`` (or ``uint8`` for 8-bit) array of *stored values*, shape ``(rows, columns)``,
row 0 at the top, column 0 at the left. ``encode`` converts it to another transfer syntax and
``write_dicom`` does both and saves. Every syntax in ``WRITABLE_TRANSFER_SYNTAXES`` reads back
through ``pydicom.dcmread(...).pixel_array``: exactly for the lossless ones, approximately for
the lossy ones.

UIDs come from ``pydicom.uid.generate_uid(entropy_srcs=...)`` so the same ``uid_entropy`` gives
the same file byte for byte. Patient attributes are synthetic (``PHANTOM^SYNTHETIC``...): no
real PHI is ever written, and the values are recognisable for PHI-leak tests.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

logger = logging.getLogger(__name__)

CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_IMAGE_STORAGE_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")

Photometric = Literal["MONOCHROME1", "MONOCHROME2"]
Modality = Literal["CR", "DX"]

_UNCOMPRESSED = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)
# Encoded by pydicom's own Dataset.compress (plugins: pylibjpeg-rle/pydicom, pyjpegls, openjpeg).
_PYDICOM_ENCODED = (RLELossless, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000)
# pydicom 3.0 has no JPEG process 1/2-4/14 encoder; GDCM's ImageChangeTransferSyntax has.
_GDCM_ENCODED = (JPEGBaseline8Bit, JPEGLossless, JPEGLosslessSV1)

WRITABLE_TRANSFER_SYNTAXES: tuple[UID, ...] = _UNCOMPRESSED + _PYDICOM_ENCODED + _GDCM_ENCODED
LOSSY_TRANSFER_SYNTAXES: tuple[UID, ...] = (JPEGLSNearLossless, JPEG2000, JPEGBaseline8Bit)

NOT_WRITABLE: dict[UID, str] = {
    # GDCM's encoder writes a 16-bit-precision SOF1 for 12-bit data (BitsAllocated, not
    # BitsStored), which process 2/4 does not allow and libjpeg-turbo refuses to read.
    JPEGExtended12Bit: "GDCM's JPEG encoder writes 16-bit precision, not the 12 bits JPEG "
    "Extended allows; no other permissively licensed 12-bit JPEG encoder installs here",
    HTJ2K: "no HTJ2K encoder: pydicom 3.0 ships none and OpenJPEG (pylibjpeg-openjpeg, GDCM) "
    "only decodes HTJ2K",
    HTJ2KLossless: "no HTJ2K encoder: pydicom 3.0 ships none and OpenJPEG only decodes HTJ2K",
    HTJ2KLosslessRPCL: "no HTJ2K encoder: pydicom 3.0 ships none and OpenJPEG only decodes HTJ2K",
}

TRANSFER_SYNTAX_ALIASES: dict[str, UID] = {
    "implicit-le": ImplicitVRLittleEndian,
    "explicit-le": ExplicitVRLittleEndian,
    "explicit-be": ExplicitVRBigEndian,
    "deflate": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "jpeg-ls-lossless": JPEGLSLossless,
    "jpeg-ls-near": JPEGLSNearLossless,
    "j2k-lossless": JPEG2000Lossless,
    "j2k": JPEG2000,
    "htj2k-lossless": HTJ2KLossless,
    "htj2k-rpcl": HTJ2KLosslessRPCL,
    "htj2k": HTJ2K,
    "jpeg-baseline": JPEGBaseline8Bit,
    "jpeg-extended": JPEGExtended12Bit,
    "jpeg-lossless": JPEGLossless,
    "jpeg-lossless-sv1": JPEGLosslessSV1,
}


def resolve_transfer_syntax(name_or_uid: str) -> UID:
    """Map a short name (``explicit-le``, ``j2k-lossless``, ...) or a UID string to a ``UID``.

    Raises ``ValueError`` for names that are neither an alias nor a known transfer syntax UID.
    """
    key = name_or_uid.strip()
    if key.lower() in TRANSFER_SYNTAX_ALIASES:
        return TRANSFER_SYNTAX_ALIASES[key.lower()]
    if key.replace(".", "").isdigit():
        uid = UID(key)
        if uid.is_transfer_syntax:
            return uid
    raise ValueError(
        f"unknown transfer syntax {name_or_uid!r}; use a UID or one of "
        f"{', '.join(sorted(TRANSFER_SYNTAX_ALIASES))}"
    )


def deterministic_uid(*entropy: object) -> UID:
    """A UID derived only from ``entropy`` (same inputs, same UID), under pydicom's root."""
    return generate_uid(entropy_srcs=[str(e) for e in entropy])


def build_dataset(
    pixels: npt.NDArray[np.unsignedinteger[Any]],
    *,
    bits_stored: int = 12,
    photometric: Photometric = "MONOCHROME2",
    modality: Modality = "DX",
    pixel_spacing_mm: tuple[float, float] = (0.14, 0.14),
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    uid_entropy: Sequence[object] = ("sharpcxr",),
    patient_name: str = "PHANTOM^SYNTHETIC",
    patient_id: str = "SHARPCXR-PHANTOM",
    institution: str = "SHARPCXR SYNTHETIC SITE",
) -> Dataset:
    """Build an uncompressed (Explicit VR LE) single-frame CR/DX dataset.

    ``pixels``: stored values, shape ``(rows, columns)``, ``uint8``/``uint16``, each value
    ``< 2**bits_stored``; for ``MONOCHROME1`` the caller has already inverted them.
    ``bits_stored`` 8..16 (8 gives BitsAllocated 8, otherwise 16). ``pixel_spacing_mm`` is
    (row spacing, column spacing). ``window`` is (center, width), ``rescale`` (slope, intercept).
    """
    if pixels.ndim != 2:
        raise ValueError(f"pixels must be 2-D (rows, columns), got shape {pixels.shape}")
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be 8..16, got {bits_stored}")
    if pixels.size and int(pixels.max()) >= 2**bits_stored:
        raise ValueError(f"pixel values exceed {bits_stored} bits (max {int(pixels.max())})")
    bits_allocated = 8 if bits_stored == 8 else 16
    arr = np.ascontiguousarray(pixels, dtype=np.uint8 if bits_allocated == 8 else np.uint16)
    if modality not in ("CR", "DX"):
        raise ValueError(f"modality must be CR or DX, got {modality!r}")
    sop_class = CR_IMAGE_STORAGE if modality == "CR" else DX_IMAGE_STORAGE_FOR_PRESENTATION

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    sop_instance = deterministic_uid(*uid_entropy, "sop")
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = deterministic_uid(*uid_entropy, "study")
    ds.SeriesInstanceUID = deterministic_uid(*uid_entropy, "series")
    # Fixed, obviously synthetic dates keep files reproducible.
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = "SYN0000001"
    ds.Modality = modality
    ds.Manufacturer = "sharpcxr synthetic phantom"
    ds.InstitutionName = institution
    ds.ReferringPhysicianName = "SYNTHETIC^REFERRER"
    ds.StudyDescription = "SYNTHETIC CHEST PHANTOM"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    # PA view displayed as if facing the patient: columns run to the patient's left, rows to feet.
    ds.PatientOrientation = ["L", "F"]
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(v) for v in arr.shape)
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    spacing = [f"{pixel_spacing_mm[0]:.6g}", f"{pixel_spacing_mm[1]:.6g}"]
    ds.PixelSpacing = spacing
    if modality == "DX":
        ds.ImagerPixelSpacing = spacing
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.DetectorType = "SCINTILLATOR"
    if window is not None:
        ds.WindowCenter = f"{window[0]:.6g}"
        ds.WindowWidth = f"{window[1]:.6g}"
    if rescale is not None:
        ds.RescaleSlope = f"{rescale[0]:.6g}"
        ds.RescaleIntercept = f"{rescale[1]:.6g}"
        ds.RescaleType = "US"
    ds.LossyImageCompression = "00"
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"
    return ds


def _stored_array(ds: Dataset) -> npt.NDArray[Any]:
    """The (rows, columns) stored values of an uncompressed little-endian ``ds``."""
    dtype = np.uint8 if int(ds.BitsAllocated) == 8 else np.dtype("<u2")
    return np.frombuffer(ds.PixelData, dtype=dtype).reshape(int(ds.Rows), int(ds.Columns))


def _mark_lossy(ds: Dataset, method: str, ratio: float) -> None:
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = method
    ds.LossyImageCompressionRatio = f"{ratio:.4g}"


def _gdcm_encode(ds: Dataset, uid: UID, jpeg_quality: int) -> bytes:
    """Encapsulated Pixel Data for ``uid`` produced by GDCM (JPEG processes pydicom lacks)."""
    import gdcm  # local: GDCM is only needed for these syntaxes
    from pydicom import dcmread

    gdcm_ts = {
        JPEGBaseline8Bit: gdcm.TransferSyntax.JPEGBaselineProcess1,
        JPEGLossless: gdcm.TransferSyntax.JPEGLosslessProcess14,
        JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
    }[uid]
    with tempfile.TemporaryDirectory(prefix="sharpcxr-gdcm-") as tmp:
        src, dst = os.path.join(tmp, "in.dcm"), os.path.join(tmp, "out.dcm")
        ds.save_as(src, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(src)
        if not reader.Read():
            raise RuntimeError("GDCM could not read the uncompressed dataset")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm_ts))
        change.SetInput(reader.GetImage())
        if uid == JPEGBaseline8Bit:
            codec = gdcm.JPEGCodec()
            codec.SetLossless(False)
            codec.SetQuality(jpeg_quality)
            change.SetUserCodec(codec)
        if not change.Change():
            raise RuntimeError(f"GDCM could not encode {uid.name}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(dst)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError(f"GDCM could not write {uid.name}")
        encoded = dcmread(dst)
        if encoded.file_meta.TransferSyntaxUID != uid:
            raise RuntimeError(f"GDCM wrote {encoded.file_meta.TransferSyntaxUID}, not {uid}")
        return bytes(encoded.PixelData)


def encode(
    ds: Dataset,
    transfer_syntax_uid: str,
    *,
    jpeg_ls_error: int = 2,
    j2k_compression_ratio: float = 10.0,
    jpeg_quality: int = 90,
) -> Dataset:
    """Re-encode an uncompressed little-endian ``ds`` (from ``build_dataset``) in place.

    Lossy settings: ``jpeg_ls_error`` (near-lossless NEAR, max absolute error),
    ``j2k_compression_ratio`` (JPEG 2000 lossy) and ``jpeg_quality`` (GDCM JPEG, 1..100).
    Returns ``ds``. Raises ``ValueError`` for syntaxes that cannot be written here (the message
    says why) or that do not fit the bit depth (JPEG Baseline: 8 bits; Extended: 8 or 12).
    """
    uid = resolve_transfer_syntax(transfer_syntax_uid)
    if uid in NOT_WRITABLE:
        raise ValueError(f"cannot write {uid.name}: {NOT_WRITABLE[uid]}")
    if uid not in WRITABLE_TRANSFER_SYNTAXES:
        raise ValueError(
            f"cannot write {uid.name or uid}: not supported by this writer; writable: "
            + ", ".join(u.name for u in WRITABLE_TRANSFER_SYNTAXES)
        )
    current = ds.file_meta.TransferSyntaxUID
    if current not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        raise ValueError(f"encode() needs an uncompressed little-endian dataset, got {current}")
    bits = int(ds.BitsStored)
    arr = _stored_array(ds)

    if uid in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        # Same little-endian pixel bytes; pydicom picks VR/endianness/deflate from the UID.
        ds.file_meta.TransferSyntaxUID = uid
    elif uid == ExplicitVRBigEndian:
        # pydicom does not byte-swap OW Pixel Data for us: store it big-endian ourselves.
        ds.PixelData = arr.astype(">u2" if arr.dtype.itemsize == 2 else np.uint8).tobytes()
        ds.file_meta.TransferSyntaxUID = uid
    elif uid in _PYDICOM_ENCODED:
        kwargs: dict[str, Any] = {"generate_instance_uid": False}
        if uid == JPEGLSNearLossless:
            kwargs["jls_error"] = jpeg_ls_error
        if uid == JPEG2000:
            kwargs["j2k_cr"] = [j2k_compression_ratio]
        ds.compress(uid, arr, **kwargs)
        if uid == JPEGLSNearLossless:
            _mark_lossy(ds, "ISO_14495_1", arr.nbytes / max(1, len(ds.PixelData)))
        elif uid == JPEG2000:
            _mark_lossy(ds, "ISO_15444_1", j2k_compression_ratio)
    else:  # GDCM JPEG processes
        if uid == JPEGBaseline8Bit and bits != 8:
            raise ValueError(f"JPEG Baseline holds 8-bit samples; got BitsStored {bits}")
        raw_size = arr.nbytes
        ds.PixelData = _gdcm_encode(ds, uid, jpeg_quality)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = uid
        if uid == JPEGBaseline8Bit:
            _mark_lossy(ds, "ISO_10918_1", raw_size / max(1, len(ds.PixelData)))
    logger.debug("encoded %s as %s", ds.SOPInstanceUID, uid.name)
    return ds


def write_dicom(
    path_or_buffer: str | os.PathLike[str] | BinaryIO,
    pixels_uint16: npt.NDArray[np.unsignedinteger[Any]],
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    jpeg_ls_error: int = 2,
    j2k_compression_ratio: float = 10.0,
    jpeg_quality: int = 90,
    **dataset_kwargs: Any,
) -> Dataset:
    """Build (``build_dataset``), encode (``encode``) and save a DICOM Part 10 file.

    ``pixels_uint16``: stored values, shape ``(rows, columns)``. ``transfer_syntax``: a UID or
    an alias from ``TRANSFER_SYNTAX_ALIASES``. Other keywords go to ``build_dataset``.
    Returns the dataset as written.
    """
    ds = build_dataset(pixels_uint16, **dataset_kwargs)
    encode(
        ds,
        transfer_syntax,
        jpeg_ls_error=jpeg_ls_error,
        j2k_compression_ratio=j2k_compression_ratio,
        jpeg_quality=jpeg_quality,
    )
    target: str | BinaryIO = (
        str(Path(path_or_buffer))
        if isinstance(path_or_buffer, str | os.PathLike)
        else path_or_buffer
    )
    ds.save_as(target, enforce_file_format=True)
    return ds
