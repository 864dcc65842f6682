"""DICOM writer: every writable transfer syntax round-trips through pydicom."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID, JPEGBaseline8Bit

from imaging.dicom_writer import (
    LOSSY_TRANSFER_SYNTAXES,
    NOT_WRITABLE,
    WRITABLE_TRANSFER_SYNTAXES,
    build_dataset,
    encode,
    resolve_transfer_syntax,
    write_dicom,
)


def _image(bits: int, rows: int = 96, columns: int = 80) -> np.ndarray:
    """Smooth pattern plus a little noise, kept away from 0 and the maximum."""
    yy, xx = np.mgrid[0:rows, 0:columns]
    top = 2**bits - 1
    base = (np.sin(xx / 9.0) + np.cos(yy / 7.0) + 2.0) / 4.0 * 0.8 + 0.1
    noise = np.random.default_rng(0).integers(0, 3, (rows, columns))
    return np.clip(base * top + noise, 0, top).astype(np.uint16)


def _bits_for(uid: UID) -> int:
    return 8 if uid == JPEGBaseline8Bit else 12


@pytest.mark.parametrize("uid", WRITABLE_TRANSFER_SYNTAXES, ids=lambda u: u.name)
def test_round_trip(uid: UID, tmp_path: Path) -> None:
    bits = _bits_for(uid)
    arr = _image(bits)
    path = tmp_path / "x.dcm"
    write_dicom(
        path, arr, transfer_syntax=uid, bits_stored=bits, photometric="MONOCHROME1",
        modality="CR", uid_entropy=(1, 2),
    )  # fmt: skip
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == uid
    assert ds.BitsStored == bits and ds.HighBit == bits - 1 and ds.PixelRepresentation == 0
    got = ds.pixel_array
    assert got.shape == arr.shape
    err = np.abs(got.astype(np.int64) - arr)
    if uid in LOSSY_TRANSFER_SYNTAXES:
        assert ds.LossyImageCompression == "01"
        assert np.percentile(err, 99) <= 0.02 * 2**bits
    else:
        assert err.max() == 0


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_big_endian_and_bits(bits: int) -> None:
    arr = _image(bits)
    buf = io.BytesIO()
    write_dicom(buf, arr, transfer_syntax="explicit-be", bits_stored=bits)
    buf.seek(0)
    ds = pydicom.dcmread(buf)
    assert ds.BitsStored == bits and ds.BitsAllocated == 16
    np.testing.assert_array_equal(ds.pixel_array, arr)


def test_not_writable_is_clear() -> None:
    for uid, reason in NOT_WRITABLE.items():
        with pytest.raises(ValueError, match=r"cannot write .*(HTJ2K|precision)"):
            write_dicom(io.BytesIO(), _image(12), transfer_syntax=uid)
        assert reason
    with pytest.raises(ValueError, match="8-bit"):
        write_dicom(io.BytesIO(), _image(12), transfer_syntax="jpeg-baseline", bits_stored=12)
    with pytest.raises(ValueError, match="unknown transfer syntax"):
        resolve_transfer_syntax("jpeg-xl-please")


def test_header_and_determinism() -> None:
    arr = _image(12)
    a = io.BytesIO()
    b = io.BytesIO()
    for buf in (a, b):
        write_dicom(buf, arr, transfer_syntax="j2k-lossless", modality="DX", uid_entropy=("s", 7),
                    pixel_spacing_mm=(0.2, 0.2), window=(2048, 4096))  # fmt: skip
    assert a.getvalue() == b.getvalue()
    a.seek(0)
    ds = pydicom.dcmread(a)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
    assert ds.ViewPosition == "PA" and ds.BodyPartExamined == "CHEST"
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.2, 0.2]
    assert ds.PatientName == "PHANTOM^SYNTHETIC" and ds.PatientBirthDate == ""
    other = build_dataset(arr, uid_entropy=("s", 8))
    assert other.SOPInstanceUID != ds.SOPInstanceUID


def test_values_beyond_bits_rejected() -> None:
    with pytest.raises(ValueError, match="exceed"):
        build_dataset(np.full((4, 4), 4096, np.uint16), bits_stored=12)
    ds = build_dataset(_image(12))
    encode(ds, "rle")
    with pytest.raises(ValueError, match="uncompressed"):
        encode(ds, "explicit-le")
