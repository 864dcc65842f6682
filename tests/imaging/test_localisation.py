"""Localisation metrics: hand-made cases with known answers and hypothesis properties."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from imaging.localisation import box_iou, mask_iou, match_boxes, percent_inside
from imaging.saliency import Box

PROPERTY = settings(max_examples=150, deadline=None)


def _mask(shape: tuple[int, int], *boxes: tuple[int, int, int, int]) -> npt.NDArray[np.bool_]:
    m = np.zeros(shape, dtype=bool)
    for y0, x0, y1, x1 in boxes:
        m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


# ------------------------------------------------------------------------ masks
def test_mask_iou_hand_examples() -> None:
    a = _mask((6, 6), (0, 0, 1, 3))  # 8 px
    b = _mask((6, 6), (1, 2, 2, 5))  # 8 px, overlap (1, 2..3) = 2 px
    assert mask_iou(a, b) == pytest.approx(2 / 14)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, _mask((6, 6), (4, 4, 5, 5))) == 0.0


def test_mask_iou_empty_cases() -> None:
    empty = np.zeros((4, 4), bool)
    assert mask_iou(empty, empty) == 1.0  # agreement on "nothing there"
    assert mask_iou(empty, _mask((4, 4), (0, 0, 0, 0))) == 0.0
    assert mask_iou(_mask((4, 4), (0, 0, 0, 0)), empty) == 0.0


def test_percent_inside_hand_examples() -> None:
    truth = _mask((5, 5), (0, 0, 2, 2))
    pred = _mask((5, 5), (2, 1, 3, 2))  # 4 px, of which row 2 (2 px) inside
    assert percent_inside(pred, truth) == pytest.approx(50.0)
    assert percent_inside(_mask((5, 5), (1, 1, 1, 1)), truth) == 100.0
    assert percent_inside(truth, truth) == 100.0


def test_percent_inside_empty_cases() -> None:
    truth = _mask((5, 5), (0, 0, 2, 2))
    empty = np.zeros((5, 5), bool)
    assert percent_inside(empty, truth) == 0.0
    assert percent_inside(empty, empty) == 0.0
    assert percent_inside(truth, empty) == 0.0


def test_mask_metrics_accept_integer_masks_and_check_shapes() -> None:
    a = np.array([[0, 255], [0, 1]], dtype=np.uint8)
    assert mask_iou(a, a.astype(bool)) == 1.0
    with pytest.raises(ValueError):
        mask_iou(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError):
        percent_inside(np.zeros(3), np.zeros(3))


@PROPERTY
@given(st.data())
def test_mask_metric_properties(data: st.DataObject) -> None:
    shape = data.draw(st.tuples(st.integers(1, 12), st.integers(1, 12)))
    a = data.draw(arrays(np.bool_, shape))
    b = data.draw(arrays(np.bool_, shape))
    iou = mask_iou(a, b)
    assert 0.0 <= iou <= 1.0 and iou == mask_iou(b, a)
    assert 0.0 <= percent_inside(a, b) <= 100.0
    if a.any():
        assert mask_iou(a, a) == 1.0 and percent_inside(a, a | b) == 100.0


# ------------------------------------------------------------------------ boxes
def test_box_iou_hand_examples() -> None:
    assert box_iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert box_iou((0, 0, 1, 1), (1, 1, 2, 2)) == pytest.approx(1 / 7)  # 1 px of 4 + 4 - 1
    assert box_iou((0, 0, 1, 1), (0, 2, 1, 3)) == 0.0  # adjacent, no shared pixel
    assert box_iou((0, 0, 9, 9), (0, 0, 4, 9)) == pytest.approx(0.5)
    assert box_iou((5, 5, 5, 5), (5, 5, 5, 5)) == 1.0  # a single pixel
    box = Box(y_min=0, x_min=0, y_max=9, x_max=9, score=1.0, area_px=100)
    assert box_iou(box, (0, 0, 4, 9)) == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [(0, 0, 1), (3, 0, 1, 5), (0, 4, 5, 3)])
def test_box_iou_rejects_malformed(bad: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        box_iou(bad, (0, 0, 1, 1))


def _box_from(t: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """(y, x, extra height, extra width) -> inclusive (y_min, x_min, y_max, x_max)."""
    return t[0], t[1], t[0] + t[2], t[1] + t[3]


boxes_strategy = st.tuples(
    st.integers(0, 15), st.integers(0, 15), st.integers(0, 8), st.integers(0, 8)
).map(_box_from)


@PROPERTY
@given(boxes_strategy, boxes_strategy)
def test_box_iou_equals_mask_iou_of_rasterised_boxes(
    a: tuple[int, int, int, int], b: tuple[int, int, int, int]
) -> None:
    expected = mask_iou(_mask((24, 24), a), _mask((24, 24), b))
    assert box_iou(a, b) == pytest.approx(expected)
    assert box_iou(a, b) == pytest.approx(box_iou(b, a))


# ------------------------------------------------------------------------ matching
def test_match_one_true_positive_per_truth_box() -> None:
    truth = [(0, 0, 9, 9)]
    preds = [Box(0, 0, 9, 9, 0.9, 100), Box(0, 0, 8, 8, 0.8, 81)]
    result = match_boxes(preds, truth)
    assert (result.tp, result.fp, result.fn) == (1, 1, 0)
    assert result.precision == 0.5 and result.recall == 1.0
    assert result.matches == ((0, 0, 1.0),)


def test_match_higher_score_claims_first() -> None:
    truth = [(0, 0, 9, 9)]
    # The better-overlapping box has the lower score: the high-score box still wins.
    preds = [(0, 0, 4, 9), (0, 0, 9, 9)]
    result = match_boxes(preds, truth, scores=[0.9, 0.1])
    assert result.matches == ((0, 0, pytest.approx(0.5)),)
    assert (result.tp, result.fp) == (1, 1)


def test_match_prediction_takes_best_unmatched_truth() -> None:
    truth = [(0, 0, 9, 9), (0, 20, 9, 29)]
    preds = [(0, 18, 9, 29), (0, 0, 9, 12)]  # each overlaps one truth box
    result = match_boxes(preds, truth)
    assert (result.tp, result.fp, result.fn) == (2, 0, 0)
    assert {(p, t) for p, t, _ in result.matches} == {(0, 1), (1, 0)}


def test_match_threshold_is_inclusive_and_zero_overlap_never_matches() -> None:
    truth = [(0, 0, 0, 9)]  # 10 px
    pred = [(0, 0, 0, 0)]  # 1 px inside: IoU exactly 0.1
    assert match_boxes(pred, truth, iou_threshold=0.1).tp == 1
    assert match_boxes(pred, truth, iou_threshold=0.11).tp == 0
    assert match_boxes([(5, 5, 6, 6)], truth, iou_threshold=0.0).tp == 0


def test_match_empty_sides() -> None:
    none_pred = match_boxes([], [(0, 0, 1, 1)])
    assert (none_pred.tp, none_pred.fp, none_pred.fn) == (0, 0, 1)
    assert none_pred.precision is None and none_pred.recall == 0.0
    none_truth = match_boxes([(0, 0, 1, 1)], [])
    assert (none_truth.tp, none_truth.fp, none_truth.fn) == (0, 1, 0)
    assert none_truth.precision == 0.0 and none_truth.recall is None


def test_match_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        match_boxes([(0, 0, 1, 1)], [], iou_threshold=1.5)
    with pytest.raises(ValueError):
        match_boxes([(0, 0, 1, 1)], [], scores=[0.1, 0.2])


@PROPERTY
@given(
    st.lists(boxes_strategy, max_size=6),
    st.lists(boxes_strategy, max_size=6),
    st.floats(0.0, 1.0),
)
def test_match_counts_are_consistent(
    preds: list[tuple[int, int, int, int]],
    truths: list[tuple[int, int, int, int]],
    threshold: float,
) -> None:
    result = match_boxes(preds, truths, iou_threshold=threshold)
    assert result.tp + result.fp == len(preds)
    assert result.tp + result.fn == len(truths)
    assert result.tp <= min(len(preds), len(truths))
    assert len({t for _, t, _ in result.matches}) == result.tp  # one TP per truth box
    assert len({p for p, _, _ in result.matches}) == result.tp
    assert all(iou >= threshold and iou > 0 for _, _, iou in result.matches)
