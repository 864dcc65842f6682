"""Shared fixtures: real DICOM files and a small builder for crafted datasets."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

REAL_DICOM_DIR = Path(__file__).resolve().parent / "data" / "real-dicom"  # see its README
SIIM_FILE = REAL_DICOM_DIR / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
FAKE_MONO1_FILE = REAL_DICOM_DIR / "Fake_MONOHR1.dcm"

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def pydicom_file(name: str) -> bytes:
    """Bytes of a test file shipped with pydicom or pydicom-data."""
    path = get_testdata_file(name)
    assert path is not None, f"{name} missing: is pydicom-data installed?"
    with open(path, "rb") as fh:
        return fh.read()


def build_dataset(
    pixels: np.ndarray[Any, Any] | None,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    transfer_syntax: str = ExplicitVRLittleEndian,
    **elements: Any,
) -> Dataset:
    """A minimal CR dataset around ``pixels`` (uint16/int16 (rows, columns) or None)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "CR"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-12345"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = pixels.dtype.itemsize * 8
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
        ds.PixelData = pixels.tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def to_bytes(ds: Dataset, *, part10: bool = True) -> bytes:
    buffer = io.BytesIO()
    if part10:
        ds.save_as(buffer, enforce_file_format=True)
    else:
        ds.save_as(buffer, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def make_dicom(pixels: np.ndarray[Any, Any] | None, **kwargs: Any) -> bytes:
    """Part 10 bytes of :func:`build_dataset`."""
    part10 = kwargs.pop("part10", True)
    return to_bytes(build_dataset(pixels, **kwargs), part10=part10)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Compact models at 128 and 256 trained on phantoms (cached, ~3 min the first time),
    for the service, end-to-end and import-graph tests."""
    from tests.service.models_fixture import build_fixture_models

    return build_fixture_models()


@pytest.fixture
def ramp12() -> np.ndarray[Any, Any]:
    """A 64 x 80 uint16 ramp over the full 12-bit range, left dark to right bright."""
    return np.tile(np.linspace(0, 4095, 80).round().astype(np.uint16), (64, 1))


@pytest.fixture
def siim_bytes() -> bytes:
    return SIIM_FILE.read_bytes()


@pytest.fixture
def fake_mono1_bytes() -> bytes:
    return FAKE_MONO1_FILE.read_bytes()


#: Digital X-Ray Image Storage - For Presentation
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def rewrite(name: str, pixels: np.ndarray[Any, Any] | None = None, **elements: str | None) -> bytes:
    """The real file ``name`` with header elements set (None: deleted) and new pixels."""
    ds = pydicom.dcmread(get_testdata_file(name))
    for keyword, value in elements.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if elements.get("SOPClassUID"):
        ds.file_meta.MediaStorageSOPClassUID = elements["SOPClassUID"]
    if pixels is not None:
        ds.PixelData = pixels.astype(ds.pixel_array.dtype).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def rg1_as_16bit_dx_with_a_missed_window() -> tuple[bytes, np.ndarray]:
    """RG1 rewritten as the real 16-bit DX chest whose window misses its pixel values.

    The stored values are inverted to MONOCHROME2 (bone bright, so the missed window
    shows white, as on that file) and stretched onto 32744..65535, the range of that
    file; BitsStored 16; WindowCenter 2725 / WindowWidth 5310, as in its header.
    Returns the bytes and the stored values.
    """
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    original = ds.pixel_array.astype(np.float64)
    inverted = original.max() - original
    stored = np.rint(32744 + inverted / inverted.max() * (65535 - 32744)).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored, ds.HighBit = 16, 15
    ds.WindowCenter, ds.WindowWidth = 2725, 5310
    ds.Modality = "DX"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue(), stored
