"""read_dicom on real files: the shared fixtures, pydicom-data's RG1 chest, pydicom's files."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from imaging import display
from imaging.decoders import plugin_order
from imaging.dicom import read_dicom, read_header
from imaging.display import MIN_CONTRAST, display_contrast
from imaging.gate import check_image
from tests.conftest import pydicom_file, rg1_as_16bit_dx_with_a_missed_window

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def lung_vs_mediastinum(p: np.ndarray) -> tuple[float, float]:
    """Mean display value of RG1's lung fields and of its mediastinum."""
    rows, cols = p.shape
    band = slice(rows // 3, rows // 2)
    lungs = p[band, cols // 5 : cols // 3].mean() + p[band, 2 * cols // 3 : 4 * cols // 5].mean()
    return float(lungs / 2), float(p[band, 9 * cols // 20 : 11 * cols // 20].mean())


def test_siim_file_decodes_with_header_facts(siim_bytes: bytes) -> None:
    image = read_dicom(siim_bytes)
    f = image.facts
    assert (f.rows, f.columns) == (1024, 1024)
    assert f.modality == "CR" and f.view_position == "PA"
    assert f.photometric_interpretation == "MONOCHROME2"
    assert f.transfer_syntax_uid == "1.2.840.10008.1.2.4.50"
    assert f.pixel_spacing_mm == pytest.approx((0.168, 0.168))
    assert f.voi_source == "stored_range"  # no window in the file: the full 8-bit range
    assert image.pixels.dtype == np.float32 and image.pixels.shape == (1024, 1024)
    assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0
    # Orientation: the lungs (centre of each half) are darker than the spine (centre).
    p = image.pixels
    lungs = (p[350:650, 200:350].mean() + p[350:650, 674:824].mean()) / 2
    assert lungs < p[350:650, 480:544].mean()


def test_fake_monochrome1_decodes_to_the_negative(
    siim_bytes: bytes, fake_mono1_bytes: bytes
) -> None:
    mono2 = read_dicom(siim_bytes)
    mono1 = read_dicom(fake_mono1_bytes)
    assert mono1.facts.photometric_interpretation == "MONOCHROME1"
    np.testing.assert_allclose(mono1.pixels, 1.0 - mono2.pixels, atol=1e-6)


def test_header_facts_hold_no_patient_identifiers(siim_bytes: bytes) -> None:
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    facts = read_header(siim_bytes).to_dict()
    text = repr(facts) + repr(read_dicom(pydicom_file("RG1_UNCR.dcm")).facts.to_dict())
    for value in (ds.get("PatientName"), ds.get("PatientID"), ds.get("InstitutionName")):
        if value:
            assert str(value) not in text
    assert not {"PatientName", "PatientID", "patient_name", "patient_id"} & set(facts)


def test_rg1_uncompressed_and_j2k_lossless_decode_identically() -> None:
    unc = read_dicom(pydicom_file("RG1_UNCR.dcm"))
    j2k = read_dicom(pydicom_file("RG1_J2KR.dcm"))
    assert unc.facts.photometric_interpretation == "MONOCHROME1"
    assert (unc.facts.rows, unc.facts.columns) == (1955, 1841)
    assert unc.facts.bits_stored == 15
    np.testing.assert_array_equal(unc.pixels, j2k.pixels)
    # Lossy JPEG 2000 of the same chest: close, not equal.
    lossy = read_dicom(pydicom_file("RG1_J2KI.dcm"))
    diff = np.abs(lossy.pixels - unc.pixels)
    assert 0 < diff.mean() < 0.005
    assert np.corrcoef(lossy.pixels.ravel(), unc.pixels.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("stem", ["RG1", "RG3"])
def test_lossless_j2k_equals_uncompressed_in_every_plugin(stem: str) -> None:
    data = pydicom_file(f"{stem}_J2KR.dcm")
    reference = read_dicom(pydicom_file(f"{stem}_UNCR.dcm")).pixels
    ts = pydicom.dcmread(get_testdata_file(f"{stem}_J2KR.dcm"), stop_before_pixels=True)
    plugins = plugin_order(ts.file_meta.TransferSyntaxUID)
    assert {"pylibjpeg", "gdcm"} <= set(plugins)
    for plugin in plugins:
        np.testing.assert_array_equal(read_dicom(data, decoding_plugin=plugin).pixels, reference)


def test_rg1_is_displayed_with_its_window_and_inverted() -> None:
    image = read_dicom(pydicom_file("RG1_UNCR.dcm"))
    assert image.facts.voi_source == "window"
    assert image.facts.voi_fallback is None  # its window has contrast: no fallback
    assert (image.facts.window_center, image.facts.window_width) == (15000, 30000)
    # MONOCHROME1 inverted: lung fields darker than the mediastinum.
    lungs, mediastinum = lung_vs_mediastinum(image.pixels)
    assert lungs < mediastinum


def test_a_window_that_misses_the_stored_values_falls_back_on_a_real_chest() -> None:
    data, stored = rg1_as_16bit_dx_with_a_missed_window()
    assert (int(stored.min()), int(stored.max())) == (32744, 65535)
    # The problem: the header's window alone turns this chest into a white square.
    ds = pydicom.dcmread(io.BytesIO(data))
    windowed = display.to_display(stored, ds, 16, 0, display.describe(ds))
    assert windowed.min() == 1.0
    image = read_dicom(data)
    f = image.facts
    assert f.voi_source == "stored_range" and f.voi_function == "LINEAR"
    assert (f.window_center, f.window_width) == (2725, 5310)  # still what the header said
    assert f.voi_fallback == (
        "the header's window (centre 2725, width 5310) leaves no contrast on this image's "
        "stored values (32744..65535); the full stored range was used instead"
    )
    assert display_contrast(image.pixels) > 10 * MIN_CONTRAST
    np.testing.assert_allclose(image.pixels, stored / 65535.0, atol=1e-6)
    lungs, mediastinum = lung_vs_mediastinum(image.pixels)
    assert lungs < mediastinum  # a chest again, the right way round
    assert check_image(f, image.pixels) == []
    # sharpcxr inspect prints these facts: the note is there, as plain JSON.
    assert read_dicom(data).facts.to_dict()["voi_fallback"] == f.voi_fallback
    # From the header alone there is no knowing: the header's window is reported.
    header = read_header(data)
    assert header.voi_source == "window" and header.voi_fallback is None


# Every compressed transfer syntax a radiograph can use, from pydicom's and pydicom-data's
# files, with the reference each is checked against.
@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),
        ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),
        ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),
        ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),
        ("MR_small_implicit.dcm", "1.2.840.10008.1.2"),
    ],
)
def test_lossless_syntaxes_match_the_uncompressed_original(name: str, syntax: str) -> None:
    image = read_dicom(pydicom_file(name))
    assert image.facts.transfer_syntax_uid == syntax
    np.testing.assert_array_equal(image.pixels, read_dicom(pydicom_file("MR_small.dcm")).pixels)


@pytest.mark.parametrize(
    ("name", "syntax", "shape"),
    [
        ("image_dfl.dcm", "1.2.840.10008.1.2.1.99", (512, 512)),
        ("JPEG-LL.dcm", "1.2.840.10008.1.2.4.70", (1024, 256)),
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", "1.2.840.10008.1.2.4.70", (768, 1024)),
        ("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81", (50, 10)),
        ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91", (1024, 256)),
        ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51", (1024, 256)),
    ],
)
def test_other_syntaxes_decode(name: str, syntax: str, shape: tuple[int, int]) -> None:
    image = read_dicom(pydicom_file(name))
    assert image.facts.transfer_syntax_uid == syntax
    assert image.pixels.shape == shape
    assert np.unique(image.pixels).size >= 8  # an image, not a constant


def test_jpeg_extended_12bit_matches_pydicom_reference_values() -> None:
    # pydicom's pixel reference for JPGExtended.dcm: arr[420, 140] == 244, arr[230, 120] == 95
    # (stored values). Our display range is the full 12-bit stored range.
    image = read_dicom(pydicom_file("JPGExtended.dcm"))
    assert image.facts.bits_stored == 12 and image.facts.voi_source == "stored_range"
    assert image.pixels[420, 140] * 4095 == pytest.approx(244, abs=1e-2)
    assert image.pixels[230, 120] * 4095 == pytest.approx(95, abs=1e-2)


def test_jpeg_ls_near_lossless_is_close_to_the_original() -> None:
    lossless = read_dicom(pydicom_file("MR_small_jpeg_ls_lossless.dcm")).pixels
    assert lossless.shape == (64, 64)
    near = read_dicom(pydicom_file("JPEGLSNearLossless_16.dcm")).pixels
    assert np.isfinite(near).all()


def test_bare_dataset_without_preamble_or_meta_decodes(ramp12: np.ndarray) -> None:
    from tests.conftest import make_dicom

    bare = make_dicom(ramp12, part10=False)
    assert bare[128:132] != b"DICM"
    image = read_dicom(bare)
    np.testing.assert_allclose(image.pixels[0], ramp12[0] / 4095, atol=1e-6)


def test_signed_ct_uses_rescale_then_full_range() -> None:
    image = read_dicom(pydicom_file("CT_small.dcm"))
    assert image.facts.pixel_representation == 1
    assert image.pixels.min() >= 0 and image.pixels.max() <= 1
    # No window: the full signed 16-bit range after rescale, so low contrast but intact.
    assert np.unique(image.pixels).size > 1000


def test_voi_lut_sequence_and_modality_lut_sequence_are_applied() -> None:
    voi = read_dicom(pydicom_file("vlut_04.dcm"))
    assert voi.facts.voi_source == "voi_lut_sequence"
    assert voi.pixels.std() > 0.01
    mlut = read_dicom(pydicom_file("mlut_18.dcm"))
    assert mlut.pixels.std() > 0.01


def test_header_facts_report_code_strings_and_the_sop_class() -> None:
    rg1 = read_header(pydicom_file("RG1_UNCR.dcm"))
    assert rg1.body_part_examined == "CHEST" and rg1.presentation_intent_type is None
    assert rg1.sop_class_uid == "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    us = read_header(pydicom_file("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    assert us.presentation_intent_type == "FOR PRESENTATION"
    assert read_header(pydicom_file("JPEG2000.dcm")).body_part_examined == "WHOLE BODY"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" chest ", "CHEST"),  # stripped, upper-cased
        ("CHEST_PA", "CHEST_PA"),
        ("Chest x-ray, Mr Smith", None),  # free text never leaves
        ("THORAX AND ABDOMEN 2", None),  # over 16 characters
        ("TÓRAX", None),  # not a Code String character
    ],
)
def test_body_part_is_reported_only_as_a_code_string(value: str, expected: str | None) -> None:
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    ds.BodyPartExamined = value
    ds.PresentationIntentType = value
    buffer = io.BytesIO()
    ds.save_as(buffer)
    facts = read_header(buffer.getvalue())
    assert facts.body_part_examined == expected
    assert facts.presentation_intent_type == expected


def test_a_malformed_sop_class_is_unknown() -> None:
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    ds.SOPClassUID = "CR image storage"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    assert read_header(buffer.getvalue()).sop_class_uid is None
