"""SIIM relative RLE and COCO uncompressed RLE: hand-made cases and round-trip properties."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imaging.rle import (
    SIIM_EMPTY,
    decode_coco_rle,
    decode_siim_rle,
    encode_coco_rle,
    encode_siim_rle,
)

PROPERTY = settings(max_examples=150, deadline=None)


def _siim_reference_decode(rle: str, rows: int, columns: int) -> npt.NDArray[np.bool_]:
    """Independent loop port of the SIIM-ACR ``rle2mask`` semantics.

    The challenge's helper walks a cursor: add the start (relative to the end of the
    previous run), paint ``length`` pixels, advance by ``length``; the flat buffer is
    column-major (the helper reshapes to (width, height) and the caller transposes).
    """
    flat = np.zeros(rows * columns, dtype=bool)
    if rle.strip() != "-1":
        values = [int(v) for v in rle.split()]
        cursor = 0
        for start, length in zip(values[0::2], values[1::2], strict=True):
            cursor += start
            flat[cursor : cursor + length] = True
            cursor += length
    return flat.reshape(columns, rows).T


@st.composite
def masks(draw: st.DrawFn) -> npt.NDArray[np.bool_]:
    """Random masks with the edge cases weighted in: empty, full, one pixel, tail runs."""
    rows = draw(st.integers(1, 24))
    columns = draw(st.integers(1, 24))
    kind = draw(st.sampled_from(["random", "empty", "full", "pixel", "tail", "head", "sparse"]))
    mask = np.zeros((rows, columns), dtype=bool)
    n = rows * columns
    if kind == "random":
        bits = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        mask = np.array(bits, dtype=bool).reshape((rows, columns), order="F")
    elif kind == "full":
        mask[:] = True
    elif kind == "pixel":
        i = draw(st.integers(0, n - 1))
        mask[i % rows, i // rows] = True
    elif kind in ("tail", "head"):
        k = draw(st.integers(1, n))
        flat = np.zeros(n, dtype=bool)
        if kind == "tail":
            flat[n - k :] = True  # a run touching the last pixel
        else:
            flat[:k] = True  # a run starting at pixel 0 (COCO's first count is 0)
        mask = flat.reshape((rows, columns), order="F")
    elif kind == "sparse":
        idx = draw(st.lists(st.integers(0, n - 1), max_size=5))
        flat = np.zeros(n, dtype=bool)
        flat[idx] = True
        mask = flat.reshape((rows, columns), order="F")
    return mask


# ---------------------------------------------------------------------------- SIIM
def test_siim_hand_example_relative_column_major() -> None:
    # 3x3, column-major pixel numbers:  0 3 6 / 1 4 7 / 2 5 8.
    # "1 2 3 1": skip 1, paint 2 (pixels 1, 2); skip 3 after the run's end (3, 4, 5),
    # paint 1 (pixel 6 = row 0, column 2).
    expected = np.array([[0, 0, 1], [1, 0, 0], [1, 0, 0]], dtype=bool)
    assert np.array_equal(decode_siim_rle("1 2 3 1", 3, 3), expected)
    assert encode_siim_rle(expected) == "1 2 3 1"


def test_siim_non_square_runs_go_down_columns() -> None:
    # 2 rows x 4 columns: pixels 0..7 go down column 0 (0, 1), then column 1 (2, 3), ...
    mask = decode_siim_rle("3 3", 2, 4)  # pixels 3, 4, 5
    expected = np.zeros((2, 4), dtype=bool)
    expected[1, 1] = expected[0, 2] = expected[1, 2] = True
    assert np.array_equal(mask, expected)


def test_siim_matches_reference_helper_on_published_style_strings() -> None:
    # Strings shaped like train-rle.csv rows: relative offsets, runs wrapping columns.
    for text in ("5 3 10 4 0 1 7 2", "0 1", "63 1", "10 20 5 5"):
        assert np.array_equal(decode_siim_rle(text, 8, 8), _siim_reference_decode(text, 8, 8))


@pytest.mark.parametrize("text", [SIIM_EMPTY, " -1", "-1 ", ""])
def test_siim_empty(text: str) -> None:
    assert not decode_siim_rle(text, 4, 5).any()


def test_siim_encode_empty_is_minus_one() -> None:
    assert encode_siim_rle(np.zeros((3, 4), dtype=bool)) == SIIM_EMPTY


def test_siim_run_to_the_last_pixel() -> None:
    assert decode_siim_rle("6 3", 3, 3)[:, 2].all()
    assert encode_siim_rle(decode_siim_rle("6 3", 3, 3)) == "6 3"


@pytest.mark.parametrize(
    "text",
    [
        "1 2 3",  # odd number of values
        "-2 3",  # negative
        "1 -3",
        "0 10",  # past the end of 3x3
        "5 2 1 2",  # second run past the end
        "a b",
        "1.5 2",
        "99999999999999999999 1",  # beyond int64
        "9223372036854775807 1",  # int64 max: would wrap to a negative end
        "0 4611686018427387904 0 4611686018427387904 0 4611686018427387904 "
        "0 4611686018427387904 1 1",  # cumulative sum wraps around to a small value
    ],
)
def test_siim_malformed_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        decode_siim_rle(text, 3, 3)


def test_siim_bad_size_raises_value_error() -> None:
    with pytest.raises(ValueError):
        decode_siim_rle("1 1", -1, 3)
    with pytest.raises(ValueError):
        encode_siim_rle(np.zeros(5, dtype=bool))


@PROPERTY
@given(masks())
def test_siim_round_trip(mask: npt.NDArray[np.bool_]) -> None:
    text = encode_siim_rle(mask)
    rows, columns = mask.shape
    assert np.array_equal(decode_siim_rle(text, rows, columns), mask)
    assert np.array_equal(_siim_reference_decode(text, rows, columns), mask)


# ---------------------------------------------------------------------------- COCO
def test_coco_hand_example() -> None:
    # 2x3: column-major flat = [1, 1, 0, 1, 0, 0].
    mask = np.array([[1, 0, 0], [1, 1, 0]], dtype=bool)
    rle = encode_coco_rle(mask)
    assert rle == {"size": [2, 3], "counts": [0, 2, 1, 1, 2]}
    assert np.array_equal(decode_coco_rle(rle), mask)


def test_coco_empty_and_full() -> None:
    assert encode_coco_rle(np.zeros((3, 4), dtype=bool))["counts"] == [12]
    assert encode_coco_rle(np.ones((3, 4), dtype=bool))["counts"] == [0, 12]
    assert decode_coco_rle({"size": [3, 4], "counts": [0, 12]}).all()


def test_coco_accepts_integer_like_counts() -> None:
    mask = decode_coco_rle({"size": [2, 2], "counts": [np.int32(1), 2.0, 1]})
    assert mask.sum() == 2


@pytest.mark.parametrize(
    "rle",
    [
        {"size": [2, 3], "counts": [-1, 7]},
        {"size": [2, 3], "counts": [1, 2, 2]},  # sums to 5
        {"size": [2, 3], "counts": [1.5, 4.5]},
        {"size": [2, 3], "counts": [10**20]},
        {"size": [2, 3], "counts": "abc"},  # compressed (string) RLE is not read
        {"size": [2, 3], "counts": 6},
        {"size": [2, 3], "counts": [True, 5]},
        {"size": [2], "counts": [6]},
        {"size": [2, 3, 1], "counts": [6]},
        {"size": [-2, -3], "counts": [6]},
        {"size": [2.5, 2], "counts": [5]},
        {"size": [0, 0], "counts": [2**63 - 1, 2**63 - 1, 2]},  # int64 sum wraps to 0
        {"counts": [6]},
        {"size": [2, 3]},
    ],
)
def test_coco_malformed_raises_value_error(rle: Any) -> None:
    with pytest.raises(ValueError):
        decode_coco_rle(rle)


@PROPERTY
@given(masks())
def test_coco_round_trip_and_invariants(mask: npt.NDArray[np.bool_]) -> None:
    rle = encode_coco_rle(mask)
    rows, columns = mask.shape
    counts = rle["counts"]
    assert rle["size"] == [rows, columns]
    assert sum(counts) == rows * columns
    assert all(c >= 0 for c in counts)
    # Starts with background: first count is 0 exactly when pixel (0, 0) is set.
    assert (counts[0] == 0) == bool(mask[0, 0])
    # Alternating runs: every count after the first is positive.
    assert all(c > 0 for c in counts[1:])
    assert np.array_equal(decode_coco_rle(rle), mask)


@PROPERTY
@given(masks())
def test_codecs_agree(mask: npt.NDArray[np.bool_]) -> None:
    rows, columns = mask.shape
    via_siim = decode_siim_rle(encode_siim_rle(mask), rows, columns)
    via_coco = decode_coco_rle(encode_coco_rle(mask))
    assert np.array_equal(via_siim, via_coco)
