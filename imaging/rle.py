"""Run-length codecs for binary masks.

Two formats, both **column-major** (pixels numbered down the first column, then the
next), which is what the published tools use:

* SIIM-ACR ``train-rle.csv`` "relative" RLE: a space-separated list of
  ``start length`` pairs where each ``start`` is the number of background pixels since
  the end of the previous run (the first is counted from pixel 0). An empty mask is the
  string ``"-1"``.
* COCO uncompressed RLE: ``{"size": [rows, columns], "counts": [n0, n1, ...]}`` where
  the counts alternate background/foreground and always start with background (so the
  first count may be 0).

Masks are ``bool`` or integer arrays of shape ``(rows, columns)``; non-zero is foreground.
Decoders return ``bool`` arrays of that shape.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

SIIM_EMPTY = "-1"


class CocoRle(TypedDict):
    """COCO uncompressed RLE: ``size`` is ``[rows, columns]``; ``counts`` column-major."""

    size: list[int]
    counts: list[int]


def _runs_column_major(
    mask: npt.NDArray[Any],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Return (starts, ends) of foreground runs in column-major order (absolute, end exclusive).

    Works on the C-order array without the transposed copy a Fortran-order ravel makes: only
    the foreground's bounding box is read (outside it every column is background, which
    merges into the neighbouring background runs), each run edge is found as a change
    between vertically adjacent pixels, and the few edges are sorted into column-major order
    by their flat index ``column * rows + row``.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (rows, columns), got shape {mask.shape}")
    m = np.asarray(mask, dtype=bool)
    rows = int(m.shape[0])
    in_columns = np.flatnonzero(m.any(axis=0))
    if in_columns.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    c0, c1 = int(in_columns[0]), int(in_columns[-1]) + 1
    in_rows = np.flatnonzero(m[:, c0:c1].any(axis=1))
    r0, r1 = int(in_rows[0]), int(in_rows[-1]) + 1
    box = m[r0:r1, c0:c1]
    width = c1 - c0
    # Edges as (row within the box, column within the box): a change between rows i-1 and
    # i is an edge at row i; the box's top row opens runs, the row below its bottom closes them.
    inner = np.flatnonzero(box[1:] != box[:-1])
    inner_rows, inner_columns = np.divmod(inner, width)
    top = np.flatnonzero(box[0])
    bottom = np.flatnonzero(box[-1])
    edge_rows = np.concatenate(
        (inner_rows + 1, np.zeros(top.size, np.intp), np.full(bottom.size, r1 - r0, np.intp))
    )
    edge_columns = np.concatenate((inner_columns, top, bottom))
    edges = (edge_columns.astype(np.int64, copy=False) + c0) * rows + (
        edge_rows.astype(np.int64, copy=False) + r0
    )
    edges.sort()
    # Within each column edges alternate opening/closing, and columns hold whole runs here.
    starts, ends = edges[0::2], edges[1::2]
    if r1 - r0 == rows and starts.size > 1:
        # A run reaching the bottom of a full-height column goes on at the top of the next.
        joined = starts[1:] == ends[:-1]
        if joined.any():
            starts = starts[np.concatenate(([True], ~joined))]
            ends = ends[np.concatenate((~joined, [True]))]
    return starts, ends


def _interleave(
    first: npt.NDArray[np.int64], second: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """``[first[0], second[0], first[1], second[1], ...]`` (equal sizes)."""
    out = np.empty(2 * first.size, dtype=np.int64)
    out[0::2] = first
    out[1::2] = second
    return out


def _gaps(starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Background before each run: ``starts[i] - ends[i - 1]`` (``starts[0]`` for the first)."""
    gaps = starts.copy()
    gaps[1:] -= ends[:-1]
    return gaps


def encode_siim_rle(mask: npt.NDArray[Any]) -> str:
    """Encode a 2-D mask as SIIM-ACR relative column-major RLE (``"-1"`` when empty)."""
    starts, ends = _runs_column_major(mask)
    if starts.size == 0:
        return SIIM_EMPTY
    return " ".join(map(str, _interleave(_gaps(starts, ends), ends - starts).tolist()))


def _as_int(value: Any, what: str) -> int:
    """``value`` as an ``int`` when integral (``3``, ``np.int32(3)``, ``3.0``); else ValueError."""
    if isinstance(value, bool | str | bytes):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    try:
        as_int = int(value)
        integral = as_int == value
    except (TypeError, ValueError, OverflowError):
        integral = False
    if not integral:
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return as_int


def _check_size(rows: Any, columns: Any) -> tuple[int, int]:
    """Validate an image size; return it as ints."""
    r, c = _as_int(rows, "rows"), _as_int(columns, "columns")
    if r < 0 or c < 0:
        raise ValueError(f"image size must be non-negative, got {r}x{c}")
    return r, c


def decode_siim_rle(rle: str, rows: int, columns: int) -> npt.NDArray[np.bool_]:
    """Decode SIIM-ACR relative column-major RLE to a ``bool`` mask of ``(rows, columns)``.

    Raises ``ValueError`` for malformed strings (odd count, negative numbers, runs past
    the end of the image).
    """
    rows, columns = _check_size(rows, columns)
    total = rows * columns
    text = rle.strip()
    if text in ("", SIIM_EMPTY):
        return np.zeros(total, dtype=bool).reshape((rows, columns), order="F")
    try:
        tokens = [int(v) for v in text.split()]
    except ValueError as exc:
        raise ValueError(f"SIIM RLE holds a non-integer token: {exc}") from None
    if len(tokens) % 2:
        raise ValueError("SIIM RLE needs an even number of values (start length pairs)")
    if min(tokens) < 0:
        raise ValueError("SIIM RLE values must be non-negative")
    # Checked with Python ints: huge values would not fit (or would wrap) in int64 below.
    if sum(tokens) > total:
        raise ValueError(f"SIIM RLE runs past the end of a {rows}x{columns} image")
    # The tokens alternate background and foreground counts, like COCO's; the rest is
    # background.
    counts = np.array([*tokens, total - sum(tokens)], dtype=np.int64)
    values = np.zeros(counts.size, dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape((rows, columns), order="F")


def encode_coco_rle(mask: npt.NDArray[Any]) -> CocoRle:
    """Encode a 2-D mask as COCO uncompressed RLE (column-major, starts with background)."""
    starts, ends = _runs_column_major(mask)
    rows, columns = int(mask.shape[0]), int(mask.shape[1])
    total = rows * columns
    counts = _interleave(_gaps(starts, ends), ends - starts)
    tail = total - (int(ends[-1]) if ends.size else 0)
    if tail > 0 or counts.size == 0:
        counts = np.append(counts, tail)
    return {"size": [rows, columns], "counts": counts.tolist()}


def decode_coco_rle(rle: CocoRle) -> npt.NDArray[np.bool_]:
    """Decode COCO uncompressed RLE to a ``bool`` mask of shape ``size``.

    Raises ``ValueError`` for a malformed ``size`` or ``counts`` (non-integers, negative
    counts, counts not summing to ``rows * columns``).
    """
    try:
        size, counts_in = list(rle["size"]), rle["counts"]
    except (KeyError, TypeError):
        raise ValueError("COCO RLE must be a mapping with 'size' and 'counts'") from None
    if len(size) != 2:
        raise ValueError(f"COCO RLE size must be [rows, columns], got {size!r}")
    rows, columns = _check_size(*size)
    total = rows * columns
    if isinstance(counts_in, str | bytes) or not hasattr(counts_in, "__iter__"):
        raise ValueError("COCO RLE counts must be a list of integers (compressed RLE is not read)")
    if type(counts_in) is list and all(type(c) is int for c in counts_in):
        counts_list: list[int] = counts_in  # the common case, already plain ints
    else:
        counts_list = [_as_int(c, "a COCO RLE count") for c in counts_in]
    if counts_list and min(counts_list) < 0:
        raise ValueError("COCO RLE counts must be non-negative")
    # Summed as Python ints: an int64 sum can wrap around and pass the check.
    if sum(counts_list) != total:
        raise ValueError(
            f"COCO RLE counts sum to {sum(counts_list)}, expected {total} for size {rows}x{columns}"
        )
    counts = np.asarray(counts_list, dtype=np.int64)
    values = np.zeros(counts.size, dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((rows, columns), order="F")
