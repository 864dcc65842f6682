"""JPEG 2000 / HTJ2K decoded at reduced resolution (imaging.reduced, read_dicom(min_side=))."""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.encaps import generate_frames

from benchmarks.bench_j2k_reduce import htj2k_encapsulate
from imaging import reduced
from imaging.dicom import read_dicom
from imaging.dicom_writer import write_dicom
from imaging.geometry import LetterboxGeometry
from imaging.phantoms.acquisition import site_profile
from imaging.phantoms.dataset import encode_phantom, generate_phantom
from imaging.preprocess import NORMALISATION_STD, preprocess

J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"


def _phantom_bytes(rows: int, columns: int, syntax: str, **kwargs: Any) -> bytes:
    profile = site_profile("a", **kwargs)
    ph = generate_phantom(0, 0, profile, rows, columns, pneumothorax=True)
    data, _ = encode_phantom(ph, profile, transfer_syntax=syntax, bits_stored=12)
    return data


def _htj2k_bytes(stored: npt.NDArray[np.uint16]) -> bytes:
    pytest.importorskip("imagecodecs")
    buffer = io.BytesIO()
    return htj2k_encapsulate(write_dicom(buffer, stored, bits_stored=12))


def _frame(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def _content_diff(full: npt.NDArray[Any], red: npt.NDArray[Any], g: LetterboxGeometry) -> Any:
    window = (
        slice(g.offset_y, g.offset_y + g.content_rows),
        slice(g.offset_x, g.offset_x + g.content_columns),
    )
    return np.abs(full[0][window] - red[0][window]) * NORMALISATION_STD


@pytest.fixture(scope="module")
def j2k_1024() -> bytes:
    return _phantom_bytes(1024, 1024, J2K_LOSSLESS)


def test_choose_reduction() -> None:
    assert reduced.MARGIN == 1.0
    assert reduced.choose_reduction(2048, 2048, 1024) == 1
    assert reduced.choose_reduction(2048, 2048, 512) == 2
    assert reduced.choose_reduction(2048, 2048, 256) == 3
    assert reduced.choose_reduction(3000, 2500, 1024) == 1  # 1250 >= 1024, 625 < 1024
    assert reduced.choose_reduction(3000, 2500, 512) == 2
    assert reduced.choose_reduction(1000, 1000, 1024) == 0
    assert reduced.choose_reduction(2048, 2048, 256, levels=2) == 2  # capped by the COD


def test_parse_codestream(j2k_1024: bytes) -> None:
    info = reduced.parse_codestream(reduced.codestream_of(_frame(j2k_1024)))
    assert (info.rows, info.columns, info.components) == (1024, 1024, 1)
    assert info.precision == 12 and not info.signed and info.plain_grid
    assert info.levels >= 3
    with pytest.raises(ValueError):
        reduced.codestream_of(b"not a codestream")
    with pytest.raises(ValueError):
        reduced.parse_codestream(_frame(j2k_1024)[:20])


@pytest.mark.parametrize("syntax", [J2K_LOSSLESS, J2K_LOSSY])
def test_reduction_zero_is_bit_exact_against_the_full_decode(syntax: str) -> None:
    """Pillow's scaling to 16 bits is undone exactly: r = 0 equals pylibjpeg's decode."""
    data = _phantom_bytes(512, 384, syntax)
    ds = pydicom.dcmread(io.BytesIO(data))
    full = ds.pixel_array
    ours = reduced.decode_reduced_frame(_frame(data), 0)
    assert ours.dtype == np.uint16
    np.testing.assert_array_equal(ours, full)


def test_reduced_shape_and_facts_keep_the_original_grid(j2k_1024: bytes) -> None:
    full = read_dicom(j2k_1024)
    red = read_dicom(j2k_1024, min_side=256)
    assert full.reduction == 1 and red.reduction == 4
    assert red.pixels.shape == (256, 256) and red.pixels.dtype == np.float32
    assert red.facts == full.facts  # rows, columns, spacing, display: the original's
    assert red.grid == (1024, 1024)
    assert float(red.pixels.min()) >= 0.0 and float(red.pixels.max()) <= 1.0
    assert abs(red.contrast - full.contrast) < 0.02


def test_no_reduction_when_not_asked_or_not_possible(j2k_1024: bytes) -> None:
    assert read_dicom(j2k_1024, min_side=1024).reduction == 1  # no level to skip
    assert read_dicom(j2k_1024, min_side=700).reduction == 1  # 512 < 700
    assert read_dicom(j2k_1024, min_side=256, decoding_plugin="pylibjpeg").reduction == 1
    explicit = _phantom_bytes(1024, 1024, "explicit-le")
    assert read_dicom(explicit, min_side=256).reduction == 1


def test_failure_falls_back_to_the_full_decode(
    j2k_1024: bytes, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(frame: bytes, reduction: int) -> Any:
        raise OSError("decoder exploded")

    monkeypatch.setattr(reduced, "decode_reduced_frame", broken)
    with caplog.at_level(logging.DEBUG, logger="imaging.reduced"):
        out = read_dicom(j2k_1024, min_side=256)
    assert out.reduction == 1 and out.pixels.shape == (1024, 1024)
    assert any("reduced JPEG 2000 decode failed" in r.getMessage() for r in caplog.records)
    assert all("PHANTOM" not in r.getMessage() for r in caplog.records)


def test_preprocess_uses_the_original_letterbox() -> None:
    data = _phantom_bytes(768, 640, J2K_LOSSLESS)
    full = read_dicom(data)
    red = read_dicom(data, min_side=128)
    assert red.reduction == 4 and red.pixels.shape == (192, 160)
    a = preprocess(full.pixels, 128)
    b = preprocess(red.pixels, 128, grid=red.grid)
    assert b.geometry == a.geometry == LetterboxGeometry.fit(768, 640, 128)
    assert b.image.shape == a.image.shape == (1, 128, 128)
    # same padding, content within the stated tolerance
    pad = a.image[0, :, : a.geometry.offset_x]
    np.testing.assert_array_equal(b.image[0, :, : a.geometry.offset_x], pad)
    diff = _content_diff(a.image, b.image, a.geometry)
    assert float(diff.max()) <= reduced.MAX_ABS_TOLERANCE
    assert float(diff.mean()) <= reduced.MEAN_ABS_TOLERANCE
    # the default call is unchanged
    np.testing.assert_array_equal(preprocess(full.pixels, 128, grid=full.grid).image, a.image)


@pytest.mark.parametrize(
    ("rows", "columns", "syntax", "resolution"),
    [
        (2048, 2048, J2K_LOSSLESS, 1024),
        (2048, 2048, J2K_LOSSLESS, 512),
        (2048, 2048, J2K_LOSSY, 512),
        (3000, 2500, J2K_LOSSLESS, 512),
    ],
)
def test_model_input_within_tolerance(
    rows: int, columns: int, syntax: str, resolution: int
) -> None:
    """The bound of imaging.reduced on the sizes of issue #15 (measured in
    benchmarks/results/j2k_reduce.json, 256-1024 px: max <= 0.064, mean <= 0.0044, display
    units)."""
    data = _phantom_bytes(rows, columns, syntax)
    full = read_dicom(data)
    red = read_dicom(data, min_side=resolution)
    assert red.reduction > 1
    a = preprocess(full.pixels, resolution)
    b = preprocess(red.pixels, resolution, grid=red.grid)
    assert a.geometry == b.geometry
    diff = _content_diff(a.image, b.image, a.geometry)
    assert float(diff.max()) <= reduced.MAX_ABS_TOLERANCE
    assert float(diff.mean()) <= reduced.MEAN_ABS_TOLERANCE


def test_alignment_matters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the half-pixel alignment of imaging.reduced the model input is off by more
    than the tolerance; with it, within."""
    import imaging.dicom

    data = _phantom_bytes(2048, 2048, J2K_LOSSLESS)
    full = preprocess(read_dicom(data).pixels, 512)
    aligned = read_dicom(data, min_side=512)
    monkeypatch.setattr(imaging.dicom, "align_to_area_grid", lambda pixels, factor, grid: pixels)
    unaligned = read_dicom(data, min_side=512)
    assert aligned.reduction == unaligned.reduction == 4
    good = _content_diff(
        full.image, preprocess(aligned.pixels, 512, grid=aligned.grid).image, full.geometry
    )
    bad = _content_diff(
        full.image, preprocess(unaligned.pixels, 512, grid=unaligned.grid).image, full.geometry
    )
    assert float(good.max()) <= reduced.MAX_ABS_TOLERANCE < float(bad.max())
    assert float(good.mean()) < float(bad.mean())


def test_monochrome1_goes_through_the_same_display_chain() -> None:
    data = _phantom_bytes(1024, 1024, J2K_LOSSLESS, photometric="MONOCHROME1")
    full = read_dicom(data)
    red = read_dicom(data, min_side=512)
    assert full.facts.photometric_interpretation == "MONOCHROME1"
    assert red.reduction == 2
    a = preprocess(full.pixels, 512)
    b = preprocess(red.pixels, 512, grid=red.grid)
    diff = _content_diff(a.image, b.image, a.geometry)
    assert float(diff.max()) <= reduced.MAX_ABS_TOLERANCE
    assert float(diff.mean()) <= reduced.MEAN_ABS_TOLERANCE


def test_8_bit_j2k() -> None:
    profile = site_profile("a")
    ph = generate_phantom(0, 0, profile, 512, 512, pneumothorax=True)
    data, _ = encode_phantom(ph, profile, transfer_syntax=J2K_LOSSLESS, bits_stored=8)
    frame = _frame(data)
    np.testing.assert_array_equal(
        reduced.decode_reduced_frame(frame, 0), pydicom.dcmread(io.BytesIO(data)).pixel_array
    )
    red = read_dicom(data, min_side=256)
    assert red.reduction == 2 and red.pixels.shape == (256, 256)


def test_htj2k_reduced() -> None:
    profile = site_profile("a")
    ph = generate_phantom(0, 0, profile, 1024, 1024, pneumothorax=True)
    _, ds = encode_phantom(ph, profile, transfer_syntax="explicit-le", bits_stored=12)
    stored = np.asarray(ds.pixel_array, dtype=np.uint16)
    data = _htj2k_bytes(stored)
    np.testing.assert_array_equal(reduced.decode_reduced_frame(_frame(data), 0), stored)
    full = read_dicom(data)
    red = read_dicom(data, min_side=512)
    assert red.reduction == 2 and red.pixels.shape == (512, 512)
    a = preprocess(full.pixels, 512)
    b = preprocess(red.pixels, 512, grid=red.grid)
    diff = _content_diff(a.image, b.image, a.geometry)
    assert float(diff.max()) <= reduced.MAX_ABS_TOLERANCE


def test_odd_sizes_reduce_or_fall_back() -> None:
    data = _phantom_bytes(1001, 999, J2K_LOSSLESS)
    full = read_dicom(data)
    red = read_dicom(data, min_side=250)
    assert red.facts == full.facts
    if red.reduction > 1:
        expected = tuple(-(-n // red.reduction) for n in (1001, 999))
        assert red.pixels.shape == expected
    b = preprocess(red.pixels, 250, grid=red.grid)
    assert b.geometry == LetterboxGeometry.fit(1001, 999, 250)


def test_configure_decoder_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPJ_NUM_THREADS", raising=False)
    assert reduced.configure_decoder_threads(2) == "2"
    assert reduced.configure_decoder_threads(4) == "2"  # an operator's setting wins


@pytest.mark.parametrize(("rows", "columns"), [(1537, 1540), (1029, 1027), (1026, 1031)])
def test_sizes_where_pillow_and_openjpeg_round_differently_still_reduce(
    rows: int, columns: int
) -> None:
    """Pillow sizes its buffer round-half-up, OpenJPEG writes ceil: where they differ at a
    level the load would fail (and fall back to the full decode after a wasted try), so
    the reduction stops at the deepest level where they agree, and really reduces."""
    data = _phantom_bytes(rows, columns, J2K_LOSSLESS)
    red = read_dicom(data, min_side=128)
    expected_r = reduced.choose_reduction(rows, columns, 128)
    assert expected_r >= 1 and red.reduction == 2**expected_r
    assert red.pixels.shape == tuple(-(-n // red.reduction) for n in (rows, columns))
    full = preprocess(read_dicom(data).pixels, 128)
    mine = preprocess(red.pixels, 128, grid=red.grid)
    assert mine.geometry == full.geometry
    assert float(np.abs(mine.image - full.image).max()) * 0.25 <= reduced.MAX_ABS_TOLERANCE
