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
    """Return (starts, lengths) of foreground runs in column-major order (absolute starts)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (rows, columns), got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order="F").view(np.uint8)
    # Pad with a background pixel on each side so every run has a rising and a falling edge.
    edges = np.flatnonzero(np.diff(np.concatenate(([0], flat, [0])).astype(np.int8)))
    starts = edges[0::2].astype(np.int64)
    lengths = (edges[1::2] - edges[0::2]).astype(np.int64)
    return starts, lengths


def encode_siim_rle(mask: npt.NDArray[Any]) -> str:
    """Encode a 2-D mask as SIIM-ACR relative column-major RLE (``"-1"`` when empty)."""
    starts, lengths = _runs_column_major(mask)
    if starts.size == 0:
        return SIIM_EMPTY
    ends = starts + lengths
    gaps = starts - np.concatenate(([0], ends[:-1]))
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    pairs[0::2] = gaps
    pairs[1::2] = lengths
    return " ".join(map(str, pairs.tolist()))


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
    flat = np.zeros(total, dtype=bool)
    if text in ("", SIIM_EMPTY):
        return flat.reshape((rows, columns), order="F")
    try:
        tokens = [int(v) for v in text.split()]
    except ValueError as exc:
        raise ValueError(f"SIIM RLE holds a non-integer token: {exc}") from None
    if len(tokens) % 2:
        raise ValueError("SIIM RLE needs an even number of values (start length pairs)")
    if min(tokens) < 0:
        raise ValueError("SIIM RLE values must be non-negative")
    # Checked with Python ints: huge values would overflow (wrap) in int64 cumsums below.
    if sum(tokens) > total:
        raise ValueError(f"SIIM RLE runs past the end of a {rows}x{columns} image")
    values = np.array(tokens, dtype=np.int64)
    gaps, lengths = values[0::2], values[1::2]
    # absolute start of run i = sum of all previous gaps and lengths + own gap
    starts = np.cumsum(gaps) + np.concatenate(([0], np.cumsum(lengths)[:-1]))
    ends = starts + lengths
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        flat[start:end] = True
    return flat.reshape((rows, columns), order="F")


def encode_coco_rle(mask: npt.NDArray[Any]) -> CocoRle:
    """Encode a 2-D mask as COCO uncompressed RLE (column-major, starts with background)."""
    starts, lengths = _runs_column_major(mask)
    rows, columns = int(mask.shape[0]), int(mask.shape[1])
    total = rows * columns
    ends = starts + lengths
    background = starts - np.concatenate(([0], ends[:-1]))
    counts = np.empty(2 * starts.size, dtype=np.int64)
    counts[0::2] = background
    counts[1::2] = lengths
    tail = total - (int(ends[-1]) if ends.size else 0)
    out = counts.tolist()
    if tail > 0 or not out:
        out.append(tail)
    return {"size": [rows, columns], "counts": out}


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
