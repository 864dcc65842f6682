"""Saliency post-processing: CAM normalisation, resampling, mask, boxes and PNGs."""

from __future__ import annotations

import io

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from scipy import ndimage

from imaging.geometry import LetterboxGeometry
from imaging.saliency import (
    Box,
    cam_to_original,
    decode_heatmap_png,
    decode_mask_png,
    explain,
    heatmap_png,
    map_box,
    mask_png,
    mask_to_boxes,
    normalise_cam,
    saliency_to_mask,
)


def _pytorch_grad_cam_reference(cam: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """What pytorch-grad-cam does to one raw map: ReLU, then ``scale_cam_image``."""
    img = np.maximum(cam, 0)
    img = img - np.min(img)
    img = img / (1e-7 + np.max(img))
    return np.float32(img)


# ------------------------------------------------------------------------ normalise
def test_normalise_hand_example() -> None:
    out = normalise_cam(np.array([[-1.0, 0.0], [1.0, 3.0]]))
    assert out.dtype == np.float32
    assert np.allclose(out, [[0, 0], [1 / 3, 1]], atol=1e-6)


@pytest.mark.parametrize("value", [0.0, -2.0, 5.0])
def test_normalise_constant_gives_zeros(value: float) -> None:
    out = normalise_cam(np.full((7, 7), value))
    assert np.array_equal(out, np.zeros((7, 7), np.float32))


def test_normalise_batch_is_per_image() -> None:
    cams = np.stack([np.eye(4), 10 * np.eye(4) + 1])
    out = normalise_cam(cams)
    assert out.shape == (2, 4, 4)
    assert np.allclose(out[0], np.eye(4), atol=1e-6)
    assert np.allclose(out[1], np.eye(4), atol=1e-6)


@pytest.mark.parametrize("bad", [np.array([1.0, 2.0]), np.array([[np.nan, 1.0], [0, 0]])])
def test_normalise_rejects_bad_input(bad: npt.NDArray[np.float64]) -> None:
    with pytest.raises(ValueError):
        normalise_cam(bad)


@settings(max_examples=150, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 16), st.integers(1, 16)),
              elements=st.floats(-1e3, 1e3, width=32)))  # fmt: skip
def test_normalise_matches_pytorch_grad_cam_and_is_idempotent(
    cam: npt.NDArray[np.float32],
) -> None:
    out = normalise_cam(cam)
    assert np.array_equal(out, _pytorch_grad_cam_reference(cam))
    assert np.all(out >= 0) and np.all(out <= 1)
    # Re-normalising only rescales: the 1e-7 leaves the peak a little under 1 for small CAMs
    # (and far under 1 for CAMs near 1e-7, where the epsilon dominates).
    if out.max() > 0.5:
        assert np.allclose(normalise_cam(out), out / out.max(), atol=1e-6)


# ------------------------------------------------------------------------ resample, mask
def test_cam_to_original_shape_range_and_threshold() -> None:
    g = LetterboxGeometry.fit(300, 200, 256)
    cam = normalise_cam(np.random.default_rng(1).normal(size=(8, 8)))
    sal = cam_to_original(cam, g)
    assert sal.shape == (300, 200) and sal.dtype == np.float32
    assert sal.min() >= 0 and sal.max() <= 1
    mask = saliency_to_mask(sal, 0.5)
    assert mask.dtype == np.bool_ and np.array_equal(mask, sal >= 0.5)


def test_saliency_to_mask_threshold_is_inclusive() -> None:
    mask = saliency_to_mask(np.array([[0.49, 0.5, 0.51]], np.float32), 0.5)
    assert mask.tolist() == [[False, True, True]]


# ------------------------------------------------------------------------ boxes
def test_boxes_hand_example_inclusive_indices_and_scores() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[1:4, 2:5] = True  # 3x3 block: rows 1..3, columns 2..4
    mask[7, 9] = True  # single pixel
    mask[8, 10] = True  # touches (7, 9) diagonally: one 8-connected component
    sal = np.zeros((10, 12), np.float32)
    sal[2, 3] = 0.6
    sal[8, 10] = 0.9
    boxes = mask_to_boxes(mask, sal, pixel_spacing_mm=(0.5, 0.2))
    assert boxes == [
        Box(y_min=7, x_min=9, y_max=8, x_max=10, score=pytest.approx(0.9), area_px=2,
            area_mm2=pytest.approx(0.2)),
        Box(y_min=1, x_min=2, y_max=3, x_max=4, score=pytest.approx(0.6), area_px=9,
            area_mm2=pytest.approx(0.9)),
    ]  # fmt: skip
    assert boxes[1].height == 3 and boxes[1].width == 3


def test_boxes_without_saliency_score_one_and_no_spacing() -> None:
    mask = np.zeros((5, 5), dtype=np.uint8)
    mask[0, 0] = 255  # non-bool input, component on the image corner
    mask[4, 2:5] = 1  # touching the bottom and right edges
    boxes = mask_to_boxes(mask)
    assert [(b.y_min, b.x_min, b.y_max, b.x_max, b.area_px) for b in boxes] == [
        (4, 2, 4, 4, 3),
        (0, 0, 0, 0, 1),
    ]
    assert all(b.score == 1.0 and b.area_mm2 is None for b in boxes)


def test_boxes_component_inside_a_hole() -> None:
    mask = np.zeros((9, 9), dtype=bool)
    mask[1:8, 1:8] = True
    mask[2:7, 2:7] = False  # a ring ...
    mask[4, 4] = True  # ... with a dot in its hole
    boxes = mask_to_boxes(mask)
    assert sorted((b.y_min, b.x_min, b.y_max, b.x_max, b.area_px) for b in boxes) == [
        (1, 1, 7, 7, 24),
        (4, 4, 4, 4, 1),
    ]


def test_boxes_empty_and_min_area() -> None:
    assert mask_to_boxes(np.zeros((4, 4), bool)) == []
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = True
    mask[3:6, 3:6] = True
    assert [b.area_px for b in mask_to_boxes(mask, min_area_px=2)] == [9]


def test_boxes_reject_bad_input() -> None:
    with pytest.raises(ValueError):
        mask_to_boxes(np.zeros(5, bool))
    with pytest.raises(ValueError):
        mask_to_boxes(np.zeros((3, 3), bool), np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError):
        mask_to_boxes(np.ones((3, 3), bool), pixel_spacing_mm=(0.1, -1.0))


@settings(max_examples=150, deadline=None)
@given(
    arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40))),
    st.integers(0, 2**32 - 1),
)
def test_boxes_match_scipy_labelling(mask: npt.NDArray[np.bool_], seed: int) -> None:
    """Same components as scipy's 8-connected labelling: boxes, pixel counts, max scores."""
    sal = np.random.default_rng(seed).random(mask.shape, dtype=np.float32)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    expected = set()
    for k, (sy, sx) in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels == k
        expected.add(
            (
                sy.start,
                sx.start,
                sy.stop - 1,
                sx.stop - 1,
                int(inside.sum()),
                float(sal[inside].max()),
            )
        )
    boxes = mask_to_boxes(mask, sal)
    got = {(b.y_min, b.x_min, b.y_max, b.x_max, b.area_px, b.score) for b in boxes}
    assert len(boxes) == count and got == expected
    assert [b.score for b in boxes] == sorted((b.score for b in boxes), reverse=True)


# ------------------------------------------------------------------------ explain, mapping
def test_explain_hot_cell_lands_at_its_original_location() -> None:
    g = LetterboxGeometry.fit(2500, 3000, 1024)
    cam = np.zeros((32, 32), np.float32)
    cam[8, 10] = 5.0  # raw CAM: explain normalises
    result = explain(cam, g, pixel_spacing_mm=(0.14, 0.14))
    assert result.saliency.shape == result.mask.shape == (2500, 3000)
    assert len(result.boxes) == 1
    box = result.boxes[0]
    centre_y, centre_x = g.to_original([(8 + 0.5) * 32, (10 + 0.5) * 32])
    assert box.y_min <= centre_y <= box.y_max + 1 and box.x_min <= centre_x <= box.x_max + 1
    # Half of the bilinear hat: one cell (32 model px ~ 94 original px) across.
    assert abs(box.height - 32 / g.scale_y) <= 2 and abs(box.width - 32 / g.scale_x) <= 2
    assert box.score == pytest.approx(1.0, abs=0.01)
    assert box.area_mm2 == pytest.approx(box.area_px * 0.14 * 0.14)


def test_explain_zero_cam_has_no_boxes() -> None:
    result = explain(np.zeros((16, 16)), LetterboxGeometry.fit(100, 80, 512))
    assert not result.mask.any() and result.boxes == [] and result.saliency.max() == 0


def test_map_box_round_trip_covers_the_region() -> None:
    g = LetterboxGeometry.fit(2500, 2000, 1024)
    model_box = Box(100, 200, 149, 299, 0.8, 5000, 12.5)
    orig = map_box(model_box, g, to="original")
    edges = g.box_to_original([100, 200, 150, 300])
    assert orig.y_min == int(np.floor(edges[0])) and orig.y_max == int(np.ceil(edges[2])) - 1
    assert orig.x_min == int(np.floor(edges[1])) and orig.x_max == int(np.ceil(edges[3])) - 1
    assert orig.score == 0.8 and orig.area_mm2 == 12.5
    assert orig.area_px == round(5000 / (g.scale_y * g.scale_x))
    back = map_box(orig, g, to="model")
    assert (back.y_min, back.x_min) <= (100, 200) and (back.y_max, back.x_max) >= (149, 299)
    assert back.y_max - back.y_min <= 51 and back.x_max - back.x_min <= 101


def test_map_box_identity_geometry() -> None:
    g = LetterboxGeometry.fit(64, 64, 64)
    box = Box(3, 4, 10, 20, 1.0, 30)
    assert map_box(box, g) == box and map_box(box, g, to="model") == box


# ------------------------------------------------------------------------ PNG
def test_mask_png_round_trip_and_is_one_bit() -> None:
    mask = np.zeros((37, 53), bool)
    mask[5:20, 7:40] = True
    mask[-1, -1] = True
    data = mask_png(mask)
    assert np.array_equal(decode_mask_png(data), mask)
    image = Image.open(io.BytesIO(data))
    assert image.mode == "1" and image.size == (53, 37)
    assert np.array_equal(np.asarray(image) > 0, mask)


def test_heatmap_png_colours_and_blend() -> None:
    sal = np.zeros((20, 30), np.float32)
    sal[:, 15:] = 1.0
    rgb = decode_heatmap_png(heatmap_png(sal)).astype(int)
    assert rgb.shape == (20, 30, 3)
    assert rgb[0, 0, 2] > rgb[0, 0, 0]  # JET: 0 is blue
    assert rgb[0, 29, 0] > rgb[0, 29, 2]  # JET: 1 is red
    gray = np.linspace(0, 1, 600, dtype=np.float32).reshape(20, 30)
    only_image = decode_heatmap_png(heatmap_png(sal, gray, alpha=0.0))
    expected = cv2.convertScaleAbs(gray, alpha=255.0)
    assert all(np.array_equal(only_image[..., c], expected) for c in range(3))
    small = decode_heatmap_png(heatmap_png(sal, gray, max_side=10))
    assert small.shape == (7, 10, 3)
    with pytest.raises(ValueError):
        heatmap_png(sal, gray[:10])
