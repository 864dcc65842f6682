"""Shared fixtures: real DICOM files and a small builder for crafted datasets."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

REAL_DICOM_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-dicom"
SIIM_FILE = REAL_DICOM_DIR / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
FAKE_MONO1_FILE = REAL_DICOM_DIR / "Fake_MONOHR1.dcm"

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def pydicom_file(name: str) -> bytes:
    """Bytes of a test file shipped with pydicom or pydicom-data."""
    from pydicom.data import get_testdata_file

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
