"""SIIM relative RLE and COCO uncompressed RLE: hand-made cases and round-trip properties."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pycocotools.mask as coco_mask
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import rle_before
from imaging.rle import (
    SIIM_EMPTY,
    CocoRle,
    decode_coco_rle,
    decode_siim_rle,
    encode_coco_rle,
    encode_siim_rle,
)

PROPERTY = settings(max_examples=150, deadline=None)
# pycocotools' decode (a reference below) trips a NumPy 2 deprecation inside pycocotools.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


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


# ------------------------------------------- equality with the slow reference codecs
# The implementations that shipped before issue #15 (benchmarks/rle_before.py, also the
# benchmark's baseline) and plain painting decoders. The fast codecs must give
# exactly the same output, and the COCO encoder the same RLE as pycocotools.
def _reference_decode_coco(rle: CocoRle) -> npt.NDArray[np.bool_]:
    rows, columns = rle["size"]
    flat = np.zeros(rows * columns, dtype=bool)
    cursor = 0
    for k, count in enumerate(rle["counts"]):
        if k % 2:
            flat[cursor : cursor + count] = True
        cursor += count
    return flat.reshape((rows, columns), order="F")


def _pycocotools_counts(mask: npt.NDArray[Any]) -> bytes:
    """pycocotools' compressed RLE of ``mask`` (its reference encoder)."""
    encoded = coco_mask.encode(np.asfortranarray(np.asarray(mask, dtype=bool).astype(np.uint8)))
    return bytes(encoded["counts"])


def _compressed(rle: CocoRle) -> bytes:
    """Our uncompressed RLE compressed by pycocotools (a lossless re-encoding of the counts)."""
    rows, columns = rle["size"]
    return bytes(coco_mask.frPyObjects(dict(rle), rows, columns)["counts"])


def _assert_all_agree(mask: npt.NDArray[Any]) -> None:
    rows, columns = mask.shape
    truth = np.asarray(mask, dtype=bool)
    rle = encode_coco_rle(mask)
    assert rle == rle_before.encode_coco(mask)
    assert all(type(c) is int for c in rle["counts"])  # JSON-ready Python ints
    siim = encode_siim_rle(mask)
    assert siim == rle_before.encode_siim(mask)
    decoded = decode_coco_rle(rle)
    assert decoded.dtype == np.bool_ and decoded.shape == (rows, columns)
    assert np.array_equal(decoded, truth)
    assert np.array_equal(decoded, _reference_decode_coco(rle))
    assert np.array_equal(decode_siim_rle(siim, rows, columns), truth)
    assert np.array_equal(_siim_reference_decode(siim, rows, columns), truth)
    if rows and columns:  # pycocotools does not take empty images
        assert _compressed(rle) == _pycocotools_counts(mask)
        assert np.array_equal(
            coco_mask.decode(coco_mask.frPyObjects(dict(rle), rows, columns)), truth
        )


@st.composite
def larger_masks(draw: st.DrawFn) -> npt.NDArray[np.bool_]:
    """Masks up to 80x80 made of rectangles and single pixels, so runs span several columns,
    bounding boxes are smaller than the image, and runs touch the top and bottom rows."""
    rows = draw(st.integers(1, 80))
    columns = draw(st.integers(1, 80))
    mask = np.zeros((rows, columns), dtype=bool)
    for _ in range(draw(st.integers(0, 6))):
        y0, y1 = sorted(draw(st.tuples(st.integers(0, rows), st.integers(0, rows))))
        x0, x1 = sorted(draw(st.tuples(st.integers(0, columns), st.integers(0, columns))))
        mask[y0:y1, x0:x1] = draw(st.booleans())
    for _ in range(draw(st.integers(0, 8))):
        mask[draw(st.integers(0, rows - 1)), draw(st.integers(0, columns - 1))] ^= True
    return mask


@PROPERTY
@given(masks())
def test_codecs_equal_reference_on_small_masks(mask: npt.NDArray[np.bool_]) -> None:
    _assert_all_agree(mask)


@PROPERTY
@given(larger_masks())
def test_codecs_equal_reference_on_larger_masks(mask: npt.NDArray[np.bool_]) -> None:
    _assert_all_agree(mask)


def _edge_case_masks() -> list[Any]:
    cases: list[tuple[str, npt.NDArray[Any]]] = []
    for rows, columns in ((1, 1), (1, 9), (9, 1), (5, 7), (7, 5), (64, 64)):
        n = rows * columns
        empty = np.zeros((rows, columns), dtype=bool)
        cases.append((f"{rows}x{columns} empty", empty))
        cases.append((f"{rows}x{columns} full", ~empty))
        for name, pixels in (
            ("first", [0]),
            ("last", [n - 1]),
            ("first+last", [0, n - 1]),
            ("all but first", list(range(1, n))),
            ("all but last", list(range(n - 1))),
            ("alternate", list(range(0, n, 2))),
        ):
            flat = np.zeros(n, dtype=bool)
            flat[pixels] = True
            cases.append((f"{rows}x{columns} {name}", flat.reshape((rows, columns), order="F")))
        if rows > 1 and columns > 1:
            rows_set = empty.copy()
            rows_set[[0, -1], :] = True  # top and bottom rows: runs across column boundaries
            cases.append((f"{rows}x{columns} top+bottom rows", rows_set))
            column = empty.copy()
            column[:, columns // 2] = True  # one full-height column inside the image
            cases.append((f"{rows}x{columns} one column", column))
            two = empty.copy()
            two[:, 0] = two[:, -1] = True  # full-height columns at both edges
            cases.append((f"{rows}x{columns} edge columns", two))
            inner = empty.copy()
            inner[1:-1, 1:-1] = True
            cases.append((f"{rows}x{columns} inner box", inner))
    return [pytest.param(mask, id=name) for name, mask in cases]


@pytest.mark.parametrize("mask", _edge_case_masks())
def test_codecs_equal_reference_on_edge_cases(mask: npt.NDArray[Any]) -> None:
    _assert_all_agree(mask)


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0)])
def test_empty_images(shape: tuple[int, int]) -> None:
    mask = np.zeros(shape, dtype=bool)
    assert (
        encode_coco_rle(mask)
        == rle_before.encode_coco(mask)
        == {"size": list(shape), "counts": [0]}
    )
    assert encode_siim_rle(mask) == SIIM_EMPTY
    assert decode_coco_rle(encode_coco_rle(mask)).shape == shape


def test_codecs_take_any_layout_and_dtype() -> None:
    rng = np.random.default_rng(15)
    base = rng.random((37, 53)) < 0.3
    base[5:30, 10:40] = True
    variants: list[npt.NDArray[Any]] = [
        base,
        np.asfortranarray(base),
        base.astype(np.uint8),
        base.astype(np.uint8) * 200,
        base.astype(np.int32) * -3,
        base.astype(np.float32) * 0.5,
        np.where(base, np.nan, 0.0),  # NaN is non-zero, so foreground
        np.pad(base, 3)[3:-3, 3:-3],  # a non-contiguous view
        np.ascontiguousarray(base.T).T,  # a transposed (Fortran-ordered) view
        base.view(np.uint8)[::1, ::1],
    ]
    expected = rle_before.encode_coco(base)
    for variant in variants:
        assert encode_coco_rle(variant) == expected
        assert encode_siim_rle(variant) == rle_before.encode_siim(base)
    strided = np.zeros((74, 106), dtype=bool)
    strided[::2, ::2] = base
    _assert_all_agree(strided[::2, ::2])


def test_encoders_do_not_modify_the_mask() -> None:
    mask = np.zeros((6, 6), dtype=bool)
    mask[:, 2:4] = True
    before = mask.copy()
    encode_coco_rle(mask)
    encode_siim_rle(mask)
    assert np.array_equal(mask, before)


@pytest.mark.parametrize("rows_columns", [(2048, 2048), (2500, 3000)])
def test_full_size_masks_equal_reference(rows_columns: tuple[int, int]) -> None:
    """Image-sized masks (the sizes issue #15 times): a disc, many small blobs, noise."""
    rows, columns = rows_columns
    rng = np.random.default_rng(rows)
    yy, xx = np.ogrid[:rows, :columns]
    disc = (yy - rows / 2) ** 2 + (xx - columns / 3) ** 2 < (rows / 5) ** 2
    blobs = np.zeros((rows, columns), dtype=bool)
    for y, x in zip(rng.integers(0, rows, 200), rng.integers(0, columns, 200), strict=True):
        blobs[y : y + 9, x : x + 7] = True
    noise = rng.random((rows, columns)) < 0.02
    full_height = np.zeros((rows, columns), dtype=bool)
    full_height[:, 100:300] = True
    full_height[rows - 5 :, 300] = True
    full_height[:3, 301] = True
    for mask in (disc, blobs, noise, full_height):
        _assert_all_agree(mask)


def test_decode_coco_fast_path_keeps_validation() -> None:
    # Plain int lists take a fast path; everything else still goes through _as_int.
    assert decode_coco_rle({"size": [2, 3], "counts": (0, 2, 4)})[:, 0].all()
    assert decode_coco_rle({"size": [2, 3], "counts": np.array([0, 2, 4])})[:, 0].all()
    with pytest.raises(ValueError):
        decode_coco_rle({"size": [2, 3], "counts": [0, 2, 4.5]})
    with pytest.raises(ValueError):
        decode_coco_rle({"size": [2, 3], "counts": [False, 6]})
