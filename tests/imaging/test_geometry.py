"""Letterbox geometry: hand-made cases and hypothesis round-trip properties."""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from imaging.geometry import LetterboxGeometry

sizes = st.integers(1, 4000)
resolutions = st.integers(16, 2048)


def _centres_to_model(geometry: LetterboxGeometry) -> tuple[npt.NDArray[np.float64], ...]:
    """Model-grid coordinates of every original pixel centre, per axis (via the public map)."""
    ys = geometry.to_model(np.stack([np.arange(geometry.rows) + 0.5, np.zeros(geometry.rows)], 1))
    xs = geometry.to_model(
        np.stack([np.zeros(geometry.columns), np.arange(geometry.columns) + 0.5], 1)
    )
    return ys[:, 0], xs[:, 1]


# ------------------------------------------------------------------------ hand-made
def test_fit_portrait_example() -> None:
    g = LetterboxGeometry.fit(2500, 2000, 1024)
    assert (g.content_rows, g.content_columns) == (1024, 819)  # round(819.2)
    assert (g.offset_y, g.offset_x) == (0, 102)  # (1024 - 819) // 2
    assert np.allclose(g.to_model([0.0, 0.0]), [0.0, 102.0])
    assert np.allclose(g.to_model([2500.0, 2000.0]), [1024.0, 921.0])
    assert np.allclose(g.to_original([512.0, 102.0 + 819 / 2]), [1250.0, 1000.0])


def test_identity_when_square_at_resolution() -> None:
    g = LetterboxGeometry.fit(64, 64, 64)
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:20, 30:33] = True
    assert np.array_equal(g.mask_to_model(mask), mask)
    assert np.array_equal(g.mask_to_original(mask), mask)
    grid = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    assert np.allclose(g.grid_to_original(grid), grid)


def test_fit_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        LetterboxGeometry.fit(0, 10, 256)
    with pytest.raises(ValueError):
        LetterboxGeometry.fit(10, 10, 8)


def test_mask_to_original_downscaled_box_example() -> None:
    # 200x100 original -> 64x64: content 64x32 at offset_x 16; 1 model px = 3.125 original.
    g = LetterboxGeometry.fit(200, 100, 64)
    model = np.zeros((64, 64), dtype=bool)
    model[10, 20] = True  # original rows [31.25, 34.375) x columns [12.5, 15.625)
    out = g.mask_to_original(model)
    rows, cols = np.nonzero(out)
    assert set(rows.tolist()) == {31, 32, 33}  # centres 31.5, 32.5, 33.5
    # centres 12.5 (a left edge belongs), 13.5, 14.5, 15.5
    assert set(cols.tolist()) == {12, 13, 14, 15}


# ------------------------------------------------------------------------ properties
@settings(max_examples=200, deadline=None)
@given(sizes, sizes, resolutions, st.data())
def test_points_round_trip(rows: int, columns: int, resolution: int, data: st.DataObject) -> None:
    g = LetterboxGeometry.fit(rows, columns, resolution)
    ys = data.draw(st.lists(st.floats(0, rows), min_size=1, max_size=8))
    xs = data.draw(st.lists(st.floats(0, columns), min_size=len(ys), max_size=len(ys)))
    pts = np.stack([ys, xs], axis=1)
    back = g.to_original(g.to_model(pts))
    assert np.allclose(back, pts, rtol=0, atol=1e-9 * max(rows, columns))
    model = g.to_model(pts)  # the image lands inside the model square
    assert np.all(model >= -1e-9) and np.all(model <= resolution + 1e-9)


@settings(max_examples=200, deadline=None)
@given(sizes, sizes, resolutions, st.data())
def test_boxes_round_trip(rows: int, columns: int, resolution: int, data: st.DataObject) -> None:
    g = LetterboxGeometry.fit(rows, columns, resolution)
    y0, y1 = sorted(data.draw(st.lists(st.floats(0, rows), min_size=2, max_size=2)))
    x0, x1 = sorted(data.draw(st.lists(st.floats(0, columns), min_size=2, max_size=2)))
    box = np.array([y0, x0, y1, x1])
    back = g.box_to_original(g.box_to_model(box))
    assert np.allclose(back, box, rtol=0, atol=1e-9 * max(rows, columns))


@st.composite
def shaped_masks(draw: st.DrawFn) -> npt.NDArray[np.bool_]:
    """A few rectangles and a disc, sized relative to the image, some down to one pixel."""
    rows, columns = draw(st.integers(1, 4000)), draw(st.integers(1, 4000))
    mask = np.zeros((rows, columns), dtype=np.uint8)
    for _ in range(draw(st.integers(0, 3))):
        y0, y1 = sorted(draw(st.lists(st.integers(0, rows), min_size=2, max_size=2)))
        x0, x1 = sorted(draw(st.lists(st.integers(0, columns), min_size=2, max_size=2)))
        mask[y0:y1, x0:x1] = 1
    if draw(st.booleans()):
        centre = (draw(st.integers(0, columns - 1)), draw(st.integers(0, rows - 1)))
        cv2.circle(mask, centre, draw(st.integers(0, max(rows, columns) // 3)), 1, -1)
    return mask.astype(bool)


def _assert_round_trip_near_edges(mask: npt.NDArray[np.bool_], resolution: int) -> None:
    """original -> model -> original changes pixels only within one model pixel of an edge.

    A model pixel spans 1/scale original pixels; an original pixel farther than that (plus
    one for rounding) from every mask edge sees a model pixel wholly on its own side, so
    it must come back unchanged. Disagreement is thus bounded by the boundary length
    times the scale.
    """
    rows, columns = mask.shape
    g = LetterboxGeometry.fit(rows, columns, resolution)
    back = g.mask_to_original(g.mask_to_model(mask))
    assert back.shape == mask.shape
    ky = math.ceil(1 / g.scale_y) + 1
    kx = math.ceil(1 / g.scale_x) + 1
    # Window sums (O(N) box filter): 0 < sum < window area <=> an edge is within (ky, kx).
    window = cv2.boxFilter(
        mask.astype(np.float32),
        cv2.CV_32F,
        (2 * kx + 1, 2 * ky + 1),
        normalize=False,
        borderType=cv2.BORDER_REPLICATE,
    )
    band = (window > 0.5) & (window < (2 * kx + 1) * (2 * ky + 1) - 0.5)
    disagree = back != mask
    assert not np.any(disagree & ~band)


@settings(max_examples=60, deadline=None)
@given(shaped_masks(), resolutions)
def test_mask_round_trip_differs_only_near_edges(
    mask: npt.NDArray[np.bool_], resolution: int
) -> None:
    _assert_round_trip_near_edges(mask, resolution)


@pytest.mark.parametrize(
    ("rows", "columns", "resolution"),
    [(2500, 3000, 1024), (4000, 4000, 16), (3999, 17, 2048), (300, 200, 2048), (4000, 1, 64)],
)
def test_mask_round_trip_large_and_extreme_shapes(rows: int, columns: int, resolution: int) -> None:
    mask = np.zeros((rows, columns), dtype=np.uint8)
    cv2.circle(mask, (columns // 3, rows // 2), max(rows, columns) // 5, 1, -1)
    mask[rows // 10 : rows // 4, columns // 2 :] = 1
    mask[-1, -1] = 1  # a single pixel in the corner
    _assert_round_trip_near_edges(mask.astype(bool), resolution)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 3000),
    st.integers(1, 3000),
    resolutions,
    st.one_of(st.integers(1, 64), st.just(0)),  # 0 stands for G = R
    st.floats(-10, 10),
    st.sampled_from(["linear", "nearest"]),
)
def test_constant_grid_stays_constant(
    rows: int, columns: int, resolution: int, cells: int, value: float, interpolation: str
) -> None:
    g = LetterboxGeometry.fit(rows, columns, resolution)
    size = cells or resolution
    out = g.grid_to_original(np.full((size, size), value, np.float32), interpolation=interpolation)
    assert out.shape == (rows, columns) and out.dtype == np.float32
    assert np.allclose(out, np.float32(value), rtol=1e-6, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 3000), resolutions, st.data())
def test_spike_at_model_pixel_lands_where_its_centres_map(
    rows: int, columns: int, resolution: int, data: st.DataObject
) -> None:
    """G = R, nearest: exactly the original pixels whose centre lies in that model pixel."""
    g = LetterboxGeometry.fit(rows, columns, resolution)
    i = data.draw(st.integers(g.offset_y, g.offset_y + g.content_rows - 1))
    j = data.draw(st.integers(g.offset_x, g.offset_x + g.content_columns - 1))
    grid = np.zeros((resolution, resolution), np.float32)
    grid[i, j] = 1.0
    cy, cx = _centres_to_model(g)
    expected = np.outer(np.floor(cy) == i, np.floor(cx) == j)
    assert np.array_equal(g.grid_to_original(grid, interpolation="nearest") > 0.5, expected)
    assert np.array_equal(g.mask_to_original(grid > 0.5), expected)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 3000),
    st.integers(1, 3000),
    st.sampled_from([64, 128, 256, 512, 768, 1024, 2048]),
    st.data(),
)
def test_cam_cell_lands_at_its_original_location(
    rows: int, columns: int, resolution: int, data: st.DataObject
) -> None:
    """A CAM at R/32: one hot cell shows up where the cell's model area maps to."""
    g = LetterboxGeometry.fit(rows, columns, resolution)
    size = resolution // 32
    cell = resolution / size
    # Cells whose centre lies on the image (cells wholly in the padding map nowhere).
    a_lo, a_hi = math.ceil(g.offset_y / cell - 0.5), int((g.offset_y + g.content_rows) / cell - 0.5)
    b_lo = math.ceil(g.offset_x / cell - 0.5)
    b_hi = int((g.offset_x + g.content_columns) / cell - 0.5)
    assume(a_lo <= a_hi and b_lo <= b_hi)  # a thin image may miss every cell centre
    a = data.draw(st.integers(a_lo, a_hi))
    b = data.draw(st.integers(b_lo, b_hi))
    centre = ((a + 0.5) * cell, (b + 0.5) * cell)
    grid = np.zeros((size, size), np.float32)
    grid[a, b] = 1.0
    cy, cx = _centres_to_model(g)
    # Nearest: the cell's [a*cell, (a+1)*cell) area. cv2 maps coordinates in fixed point
    # (1/1024 of a cell), so pixels right on a cell boundary may go either way.
    near = g.grid_to_original(grid, interpolation="nearest") > 0.5
    in_y, in_x = np.floor(cy / cell) == a, np.floor(cx / cell) == b
    tol = 2 / 1024
    sure_y = np.abs(cy / cell - np.round(cy / cell)) > tol
    sure_x = np.abs(cx / cell - np.round(cx / cell)) > tol
    sure = np.outer(sure_y, sure_x)
    assert np.array_equal(near[sure], np.outer(in_y, in_x)[sure])
    # Linear: the pixel whose centre is nearest the cell centre carries the bilinear hat's
    # value there (up to cv2's 1/32-cell weight quantisation; edge replication can only add);
    # for interior cells the brightest pixel is within half a pixel spacing of the centre.
    lin = g.grid_to_original(grid, interpolation="linear")
    assume(lin.max() > 0)
    nearest = (int(np.argmin(np.abs(cy - centre[0]))), int(np.argmin(np.abs(cx - centre[1]))))
    hat_y = 1 - abs(cy[nearest[0]] - centre[0]) / cell
    hat_x = 1 - abs(cx[nearest[1]] - centre[1]) / cell
    assert lin[nearest] >= hat_y * hat_x - 2 / 32 - 1e-6
    if 0 < a < size - 1 and 0 < b < size - 1:
        r, c = np.unravel_index(int(np.argmax(lin)), lin.shape)
        assert abs(cy[r] - centre[0]) <= 0.5 * g.scale_y + cell / 32 + 1e-6
        assert abs(cx[c] - centre[1]) <= 0.5 * g.scale_x + cell / 32 + 1e-6
