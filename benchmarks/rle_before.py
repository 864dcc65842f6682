"""The run-length codecs of ``imaging/rle.py`` as they were before issue #15.

Kept as the baseline of ``benchmarks/bench_rle.py`` (old against new in the same run) and
as the reference the fast codecs must equal exactly in ``tests/imaging/test_rle.py``:
a Fortran-order ravel and an int8 diff over the whole image, a Python loop painting runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from imaging.rle import SIIM_EMPTY, CocoRle, _as_int, _check_size


def runs(mask: npt.NDArray[Any]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    flat = np.asarray(mask, dtype=bool).ravel(order="F").view(np.uint8)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], flat, [0])).astype(np.int8)))
    return edges[0::2].astype(np.int64), (edges[1::2] - edges[0::2]).astype(np.int64)


def encode_coco(mask: npt.NDArray[Any]) -> CocoRle:
    starts, lengths = runs(mask)
    rows, columns = int(mask.shape[0]), int(mask.shape[1])
    ends = starts + lengths
    counts = np.empty(2 * starts.size, dtype=np.int64)
    counts[0::2] = starts - np.concatenate(([0], ends[:-1]))
    counts[1::2] = lengths
    tail = rows * columns - (int(ends[-1]) if ends.size else 0)
    out = counts.tolist()
    if tail > 0 or not out:
        out.append(tail)
    return {"size": [rows, columns], "counts": out}


def encode_siim(mask: npt.NDArray[Any]) -> str:
    starts, lengths = runs(mask)
    if starts.size == 0:
        return SIIM_EMPTY
    ends = starts + lengths
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    pairs[0::2] = starts - np.concatenate(([0], ends[:-1]))
    pairs[1::2] = lengths
    return " ".join(map(str, pairs.tolist()))


def decode_coco(rle: CocoRle) -> npt.NDArray[np.bool_]:
    rows, columns = _check_size(*rle["size"])
    counts_list = [_as_int(c, "a COCO RLE count") for c in rle["counts"]]
    if counts_list and min(counts_list) < 0:
        raise ValueError("COCO RLE counts must be non-negative")
    if sum(counts_list) != rows * columns:
        raise ValueError("COCO RLE counts do not sum to rows * columns")
    values = np.zeros(len(counts_list), dtype=bool)
    values[1::2] = True
    return np.repeat(values, np.asarray(counts_list, dtype=np.int64)).reshape(
        (rows, columns), order="F"
    )


def decode_siim(rle: str, rows: int, columns: int) -> npt.NDArray[np.bool_]:
    rows, columns = _check_size(rows, columns)
    flat = np.zeros(rows * columns, dtype=bool)
    if rle.strip() in ("", SIIM_EMPTY):
        return flat.reshape((rows, columns), order="F")
    tokens = [int(v) for v in rle.split()]
    if len(tokens) % 2 or min(tokens) < 0 or sum(tokens) > rows * columns:
        raise ValueError("malformed SIIM RLE")
    values = np.array(tokens, dtype=np.int64)
    gaps, lengths = values[0::2], values[1::2]
    starts = np.cumsum(gaps) + np.concatenate(([0], np.cumsum(lengths)[:-1]))
    for start, end in zip(starts.tolist(), (starts + lengths).tolist(), strict=True):
        flat[start:end] = True
    return flat.reshape((rows, columns), order="F")
