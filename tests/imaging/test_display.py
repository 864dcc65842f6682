"""The display chain: modality LUT -> VOI -> MONOCHROME1, on crafted files with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.dicom import read_dicom
from tests.conftest import make_dicom


def values(*stored: int) -> np.ndarray:
    return np.array([list(stored)], dtype=np.uint16)


def test_no_window_uses_the_full_stored_range(ramp12: np.ndarray) -> None:
    image = read_dicom(make_dicom(ramp12, bits_stored=12))
    assert image.facts.voi_source == "stored_range"
    np.testing.assert_allclose(image.pixels, ramp12 / 4095.0, atol=1e-6)


def test_linear_window_formula() -> None:
    # PS3.3 C.11.2.1.2.1 with c=2048, w=1025: below c-0.5-(w-1)/2 = 1535.5 -> 0,
    # above c-0.5+(w-1)/2 = 2559.5 -> 1, linear between.
    pixels = values(0, 1535, 1536, 2047, 2048, 2559, 2560, 4095)
    image = read_dicom(make_dicom(pixels, WindowCenter=2048, WindowWidth=1025))
    expected = np.clip((pixels[0] - 2047.5) / 1024.0 + 0.5, 0, 1)
    np.testing.assert_allclose(image.pixels[0], expected, atol=1e-6)
    assert image.pixels[0, 0] == 0.0 and image.pixels[0, -1] == 1.0


def test_first_of_several_windows_is_used() -> None:
    pixels = values(1000, 2000, 3000)
    image = read_dicom(make_dicom(pixels, WindowCenter=[2000, 500], WindowWidth=[2001, 100]))
    assert image.facts.window_center == 2000 and image.facts.window_width == 2001
    expected = np.clip((pixels[0] - 1999.5) / 2000.0 + 0.5, 0, 1)
    np.testing.assert_allclose(image.pixels[0], expected, atol=1e-6)


def test_rescale_applies_before_the_window() -> None:
    pixels = values(0, 100, 200)
    # modality value = 2 * stored - 100 -> -100, 100, 300; window c=100, w=401 LINEAR_EXACT
    image = read_dicom(
        make_dicom(
            pixels,
            RescaleSlope=2,
            RescaleIntercept=-100,
            WindowCenter=100,
            WindowWidth=400,
            VOILUTFunction="LINEAR_EXACT",
        )
    )
    np.testing.assert_allclose(image.pixels[0], [0.0, 0.5, 1.0], atol=1e-6)


def test_sigmoid_window() -> None:
    pixels = values(1000, 2000, 3000)
    image = read_dicom(
        make_dicom(pixels, WindowCenter=2000, WindowWidth=1000, VOILUTFunction="SIGMOID")
    )
    expected = 1 / (1 + np.exp(-4 * (pixels[0].astype(float) - 2000) / 1000))
    np.testing.assert_allclose(image.pixels[0], expected, atol=1e-6)


def test_monochrome1_inverts_after_the_window(ramp12: np.ndarray) -> None:
    kwargs = {"WindowCenter": 2048, "WindowWidth": 2048}
    mono2 = read_dicom(make_dicom(ramp12, **kwargs)).pixels
    mono1 = read_dicom(make_dicom(ramp12, photometric="MONOCHROME1", **kwargs)).pixels
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert mono1[0, 0] == 1.0  # stored 0 in MONOCHROME1 is white


@pytest.mark.parametrize("bad", [{"WindowWidth": 0, "WindowCenter": 10}, {"WindowCenter": 10}])
def test_unusable_window_falls_back_to_stored_range(bad: dict, ramp12: np.ndarray) -> None:
    image = read_dicom(make_dicom(ramp12, **bad))
    assert image.facts.voi_source == "stored_range"


def test_unused_high_bits_are_cleared() -> None:
    # 12 bits stored; an overlay bit set in bit 15 must not change the value.
    pixels = values(100, 100 | 0x8000)
    image = read_dicom(make_dicom(pixels, bits_stored=12))
    assert image.pixels[0, 0] == image.pixels[0, 1]


def test_signed_pixels_with_rescale() -> None:
    pixels = np.array([[-2048, 0, 2047]], dtype=np.int16)
    image = read_dicom(make_dicom(pixels, bits_stored=12))
    np.testing.assert_allclose(image.pixels[0], [0.0, 2048 / 4095, 1.0], atol=1e-6)


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [
        ({"PixelSpacing": [0.2, 0.1]}, (0.2, 0.1)),
        ({"ImagerPixelSpacing": [0.15, 0.15]}, (0.15, 0.15)),
        ({"PixelSpacing": [0, 0], "ImagerPixelSpacing": [0.3, 0.3]}, (0.3, 0.3)),
        ({"PixelSpacing": [0, 0]}, None),
        ({"PixelSpacing": [-1, 0.2]}, None),
        ({}, None),
    ],
)
def test_pixel_spacing(
    spacing: dict, expected: tuple[float, float] | None, ramp12: np.ndarray
) -> None:
    facts = read_dicom(make_dicom(ramp12, **spacing)).facts
    assert facts.pixel_spacing_mm == (pytest.approx(expected) if expected else None)


def test_malformed_spacing_is_unknown(ramp12: np.ndarray) -> None:
    data = make_dicom(ramp12, PixelSpacing=[0.25, 0.25])
    assert b"0.25\\0.25" in data
    broken = data.replace(b"0.25\\0.25", b"abcd\\efgh")  # same length: still parses
    assert read_dicom(broken).facts.pixel_spacing_mm is None
