"""Preprocessing to the model input: shape, normalisation, letterbox, antialiasing."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.preprocess import (
    NORMALISATION_MEAN,
    NORMALISATION_STD,
    model_input_to_display,
    preprocess,
    resize_display,
)


def test_square_image_fills_the_input() -> None:
    pixels = np.full((512, 512), 0.75, dtype=np.float32)
    out = preprocess(pixels, 256)
    assert out.image.shape == (1, 256, 256) and out.image.dtype == np.float32
    np.testing.assert_allclose(
        out.image, (0.75 - NORMALISATION_MEAN) / NORMALISATION_STD, atol=1e-6
    )


def test_letterbox_pads_the_short_side_with_black() -> None:
    pixels = np.ones((100, 200), dtype=np.float32)  # landscape
    out = preprocess(pixels, 64)
    g = out.geometry
    assert (g.content_rows, g.content_columns, g.offset_y, g.offset_x) == (32, 64, 16, 0)
    pad = (0.0 - NORMALISATION_MEAN) / NORMALISATION_STD
    assert (out.image[0, :16] == pad).all() and (out.image[0, 48:] == pad).all()
    assert np.allclose(out.image[0, 16:48], (1.0 - NORMALISATION_MEAN) / NORMALISATION_STD)


def test_downscaling_is_antialiased() -> None:
    # A 1-pixel checkerboard is pure Nyquist: area averaging gives flat grey, whereas
    # nearest or bilinear decimation would keep a full-contrast alias.
    board = (np.indices((512, 512)).sum(axis=0) % 2).astype(np.float32)
    small = resize_display(board, 128, 128)
    assert np.abs(small - 0.5).max() < 1e-6


def test_thin_line_survives_as_lower_contrast_not_as_nothing() -> None:
    pixels = np.zeros((1024, 1024), dtype=np.float32)
    pixels[:, 500] = 1.0  # a 1-px line: at 64 px it must be averaged in, not dropped
    small = resize_display(pixels, 64, 64)
    assert small.max() == pytest.approx(1 / 16, abs=1e-6)


def test_upscaling_small_images() -> None:
    pixels = np.random.default_rng(0).random((40, 30)).astype(np.float32)
    out = preprocess(pixels, 128)
    assert out.image.shape == (1, 128, 128)
    assert out.geometry.content_rows == 128 and out.geometry.content_columns == 96


def test_pixel_convention_is_checked() -> None:
    with pytest.raises(ValueError, match="float32"):
        preprocess(np.zeros((10, 10), dtype=np.float64), 64)
    with pytest.raises(ValueError, match="2-D"):
        preprocess(np.zeros((1, 10, 10), dtype=np.float32), 64)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        preprocess(np.full((10, 10), 3.0, dtype=np.float32), 64)
    with pytest.raises(ValueError, match="resolution"):
        preprocess(np.zeros((10, 10), dtype=np.float32), 8)


def test_model_input_round_trips_to_display() -> None:
    pixels = np.tile(np.linspace(0, 1, 256, dtype=np.float32), (256, 1))
    display = model_input_to_display(preprocess(pixels, 256).image)
    assert display.dtype == np.uint8 and display.shape == (256, 256)
    np.testing.assert_allclose(display[0] / 255.0, pixels[0], atol=1 / 255)
