"""Every refusal of the DICOM path, from real or crafted bytes, with its error class."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless

from imaging import errors
from imaging.dicom import read_dicom, read_header
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
from imaging.raster import RasterDecodeError
from tests.conftest import build_dataset, make_dicom, pydicom_file, to_bytes


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "error", "words", "code"),
    [
        (b"", NotDicomError, "empty", "not_dicom"),
        (np.random.default_rng(1).bytes(4096), NotDicomError, "not DICOM", "not_dicom"),
        (png_bytes(), NotDicomError, "PNG", "not_dicom"),
        (b"%PDF-1.7\n" + b"x" * 500, NotDicomError, "PDF", "not_dicom"),
        (b"hello, this is a text file\n" * 20, NotDicomError, "not DICOM", "not_dicom"),
        (
            bytes(128) + b"DICM" + np.random.default_rng(2).bytes(4096),
            CorruptDicomError,
            "DICOM",
            "corrupt_dicom",
        ),
    ],
    ids=["empty", "random", "png", "pdf", "text", "dicm-then-random"],
)
def test_not_dicom(data: bytes, error: type[ImagingError], words: str, code: str) -> None:
    with pytest.raises(error, match=words) as info:
        read_dicom(data)
    assert info.value.code == code


@pytest.mark.parametrize("fraction", [0.001, 0.05, 0.5, 0.999])
def test_truncated_uncompressed_file(fraction: float) -> None:
    data = pydicom_file("RG1_UNCR.dcm")
    with pytest.raises(CorruptDicomError) as info:
        read_dicom(data[: int(len(data) * fraction)])
    assert info.value.code == "truncated_dicom"


@pytest.mark.parametrize("fraction", [0.3, 0.9, 0.9999])
def test_truncated_jpeg2000_file(fraction: float) -> None:
    data = pydicom_file("RG1_J2KR.dcm")
    with pytest.raises(TruncatedDicomError, match="truncated"):
        read_dicom(data[: int(len(data) * fraction)])


def test_pydicoms_own_truncated_files() -> None:
    with pytest.raises(TruncatedDicomError):
        read_dicom(pydicom_file("MR_truncated.dcm"))
    with pytest.raises(TruncatedDicomError):
        read_dicom(pydicom_file("emri_small_jpeg_2k_lossless_too_short.dcm"))


def test_corrupt_compressed_pixel_data(ramp12: np.ndarray) -> None:
    ds = build_dataset(ramp12)
    ds.compress(RLELossless)
    data = bytearray(to_bytes(ds))
    # Overwrite the RLE segment bytes (the end of the file) with noise.
    data[-2000:] = np.random.default_rng(3).bytes(2000)
    with pytest.raises(CorruptDicomError, match=r"could not be decoded|truncated"):
        read_dicom(bytes(data))


@pytest.mark.parametrize(
    ("name", "error", "code"),
    [
        ("test-SR.dcm", NoPixelDataError, "no_pixel_data"),
        ("rtplan.dcm", NoPixelDataError, "no_pixel_data"),
        ("SC_rgb.dcm", ColourImageError, "colour_image"),
        ("SC_rgb_jpeg_dcmtk.dcm", ColourImageError, "colour_image"),
        ("examples_palette.dcm", ColourImageError, "colour_image"),
        ("emri_small.dcm", MultiFrameError, "multi_frame"),
        ("examples_ybr_color.dcm", MultiFrameError, "multi_frame"),
    ],
)
def test_valid_dicom_that_cannot_be_assessed(
    name: str, error: type[ImagingError], code: str
) -> None:
    with pytest.raises(error) as info:
        read_dicom(pydicom_file(name))
    assert info.value.code == code


def test_no_pixel_data_crafted() -> None:
    with pytest.raises(NoPixelDataError, match="no pixel data"):
        read_dicom(make_dicom(None))


def test_huge_declared_image_is_refused_before_decoding(ramp12: np.ndarray) -> None:
    ds = build_dataset(ramp12)
    # Rows/Columns are US (max 65535), so a hostile file declares them with VR UL in
    # explicit VR: 10^10 pixels, while the data are tiny.
    del ds.Rows, ds.Columns
    ds.add_new(0x00280010, "UL", 100_000)
    ds.add_new(0x00280011, "UL", 100_000)
    data = to_bytes(ds)
    tracemalloc.start()
    with pytest.raises(PixelBudgetError, match="100000 x 100000") as info:
        read_dicom(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.value.code == "image_too_large"
    # The imaging path names no deployment setting: the service adds its own name.
    assert "raise the pixel budget" in info.value.message
    assert "SHARPCXR" not in info.value.message
    assert peak < 50 * 2**20  # nothing near the 20 GB the header asks for was allocated
    # The budget is configurable: a small one refuses an ordinary image too.
    with pytest.raises(PixelBudgetError, match="budget of 1,000"):
        read_header(make_dicom(ramp12), max_pixels=1_000)


def test_huge_declared_compressed_image_is_refused(ramp12: np.ndarray) -> None:
    ds = build_dataset(ramp12)
    ds.compress(JPEG2000Lossless)
    ds.Rows, ds.Columns = 65535, 65535
    with pytest.raises(PixelBudgetError):
        read_dicom(to_bytes(ds))


def test_multi_frame_crafted(ramp12: np.ndarray) -> None:
    frames = np.stack([ramp12, ramp12])
    ds = build_dataset(ramp12)
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    with pytest.raises(MultiFrameError, match="2 frames"):
        read_dicom(to_bytes(ds))


def test_unknown_and_video_transfer_syntaxes(ramp12: np.ndarray) -> None:
    for uid in ("1.2.840.10008.1.2.4.100", "1.2.3.4.5.6.7"):  # MPEG2, made up
        ds = build_dataset(ramp12)
        ds.file_meta.TransferSyntaxUID = uid
        ds.PixelData = encapsulate([ramp12.tobytes()])
        buffer = io.BytesIO()
        ds.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
        with pytest.raises(UnsupportedTransferSyntaxError, match="cannot be decoded") as info:
            read_dicom(buffer.getvalue())
        assert info.value.code == "unsupported_transfer_syntax"


def test_float_pixel_data_and_odd_layouts(ramp12: np.ndarray) -> None:
    with pytest.raises(UnsupportedImageError):
        read_dicom(pydicom_file("liver_1frame.dcm"))  # 1 bit allocated
    ds = build_dataset(ramp12, bits_stored=12)
    ds.BitsStored = 20  # more than allocated
    with pytest.raises(UnsupportedImageError, match="bits stored"):
        read_dicom(to_bytes(ds))


def test_refusal_messages_hold_no_patient_identifiers(ramp12: np.ndarray) -> None:
    ds = build_dataset(ramp12, PatientName="Secret^Person", PatientID="MRN-998877")
    ds.Rows = 65_000
    with pytest.raises(ImagingError) as info:
        read_dicom(to_bytes(ds))
    assert "Secret" not in info.value.message and "998877" not in info.value.message


def test_random_mutations_never_escape_as_other_exceptions(ramp12: np.ndarray) -> None:
    """Fuzz lite: flipped bytes anywhere give a decoded image or an ImagingError."""
    base = bytearray(make_dicom(ramp12))
    rng = np.random.default_rng(7)
    for _ in range(300):
        data = bytearray(base)
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
            data[int(pos)] = int(rng.integers(0, 256))
        try:
            image = read_dicom(bytes(data), max_pixels=10_000_000)
        except ImagingError:
            continue
        assert image.pixels.dtype == np.float32
        assert np.isfinite(image.pixels).all()


def test_imaging_errors_know_nothing_of_http() -> None:
    """Codes are the contract; the service maps them to HTTP statuses in one place."""
    classes = [
        c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, ImagingError)
    ] + [RasterDecodeError]
    assert len(classes) >= 11
    for cls in classes:
        assert not hasattr(cls, "http_status"), cls.__name__
    codes = {cls.code for cls in classes}
    assert len(codes) == len(classes)  # one stable code per class
    assert {
        "not_dicom",
        "corrupt_dicom",
        "truncated_dicom",
        "no_pixel_data",
        "colour_image",
        "multi_frame",
        "unsupported_transfer_syntax",
        "image_too_large",
        "unsupported_image",
        "corrupt_image",
    } <= codes
