"""Stored pixel values -> display values: modality LUT, VOI, MONOCHROME1 inversion.

The order is the DICOM grayscale pipeline (PS3.4 N.2): modality LUT (or rescale slope /
intercept), then VOI (the VOI LUT Sequence if present, else the first window, else the
full stored range), then the MONOCHROME1 inversion, so the output always reads
**higher = denser / brighter**, as on a light box.

For stored values of up to 16 bits the whole chain is folded into one lookup table over
every possible stored value (at most 65536 entries), applied with a single gather: the
chain is exact (pydicom's own modality and VOI LUT code on the table) and a 2048x2048
image costs one pass instead of four float passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi

#: stored values of this many bits or fewer go through a lookup table
MAX_LUT_BITS = 16


@dataclass(frozen=True)
class DisplayTransform:
    """What the display chain will do, for the header facts (no patient data)."""

    voi_source: str  # "voi_lut_sequence" | "window" | "stored_range"
    window_center: float | None
    window_width: float | None
    voi_function: str  # LINEAR | LINEAR_EXACT | SIGMOID (for windows)
    invert: bool


def stored_range(bits_stored: int, pixel_representation: int) -> tuple[int, int]:
    """Smallest and largest stored value representable (inclusive)."""
    if pixel_representation == 1:
        return -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    return 0, (1 << bits_stored) - 1


def _first_number(value: Any) -> float | None:
    """First value of a (possibly multi-valued) numeric element, None when unusable."""
    try:
        if isinstance(value, list | tuple) or (
            hasattr(value, "__getitem__") and not isinstance(value, str | bytes)
        ):
            value = value[0]
        number = float(value)
    except (TypeError, ValueError, IndexError, KeyError):
        return None
    return number if math.isfinite(number) else None


def describe(ds: Dataset) -> DisplayTransform:
    """Decide which VOI applies to ``ds`` (first item / first window wins)."""
    invert = str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    if _voi_lut_usable(ds):
        return DisplayTransform("voi_lut_sequence", None, None, "LUT", invert)
    center = _first_number(ds.get("WindowCenter"))
    width = _first_number(ds.get("WindowWidth"))
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    min_width = 1.0 if function == "LINEAR" else 0.0
    if center is not None and width is not None and width > min_width:
        return DisplayTransform("window", center, width, function, invert)
    return DisplayTransform("stored_range", None, None, "LINEAR", invert)


def _voi_lut_usable(ds: Dataset) -> bool:
    try:
        seq = ds.get("VOILUTSequence")
        if not seq:
            return False
        item = seq[0]
        return "LUTDescriptor" in item and "LUTData" in item
    except Exception:  # a malformed sequence: fall back to the window, as viewers do
        return False


def _window(values: npt.NDArray[np.float64], t: DisplayTransform) -> npt.NDArray[np.float64]:
    """Window to [0, 1] with the formulas of PS3.3 C.11.2.1.2."""
    assert t.window_center is not None and t.window_width is not None
    c, w = t.window_center, t.window_width
    if t.voi_function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    if t.voi_function == "LINEAR_EXACT":
        return np.clip((values - c) / w + 0.5, 0.0, 1.0)
    return np.clip((values - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0)


def _voi(
    values: npt.NDArray[np.float64], ds: Dataset, t: DisplayTransform, full: tuple[float, float]
) -> npt.NDArray[np.float64]:
    """Apply the chosen VOI to modality values; output in [0, 1]."""
    if t.voi_source == "voi_lut_sequence":
        item = ds.VOILUTSequence[0]
        nbits = int(item.LUTDescriptor[2]) or 16
        # The VOI LUT is indexed by (integer) modality values.
        indices = np.rint(values).astype(np.int64)
        lut_values = np.asarray(apply_voi(indices, ds, index=0), dtype=np.float64)
        return np.clip(lut_values / float((1 << nbits) - 1), 0.0, 1.0)
    if t.voi_source == "window":
        return _window(values, t)
    lo, hi = full
    if hi <= lo:
        return np.zeros_like(values)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def display_lut(
    ds: Dataset, bits_stored: int, pixel_representation: int, t: DisplayTransform
) -> tuple[npt.NDArray[np.float32], int]:
    """The whole display chain as a table over every stored value.

    Returns ``(lut, first)``: ``lut[v - first]`` is the display value (float32 in [0, 1],
    higher = brighter) of stored value ``v``.
    """
    lo, hi = stored_range(bits_stored, pixel_representation)
    # int64, not float: a Modality LUT Sequence indexes its table with the stored values.
    stored = np.arange(lo, hi + 1, dtype=np.int64)
    modality = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    full = (float(modality.min()), float(modality.max()))
    out = _voi(modality, ds, t, full)
    if t.invert:
        out = 1.0 - out
    return out.astype(np.float32), lo


def to_display(
    stored: npt.NDArray[Any],
    ds: Dataset,
    bits_stored: int,
    pixel_representation: int,
    t: DisplayTransform,
) -> npt.NDArray[np.float32]:
    """Map decoded stored values ``(rows, columns)`` to display float32 in [0, 1].

    Values outside the declared stored range (files that lie about Bits Stored) are
    clipped to it rather than wrapped.
    """
    if bits_stored <= MAX_LUT_BITS and stored.dtype.kind in "ui" and stored.dtype.itemsize <= 2:
        lut, first = display_lut(ds, bits_stored, pixel_representation, t)
        index = stored if first == 0 else stored.astype(np.int32) - first
        return np.take(lut, index, mode="clip")
    # Wide (17-32 bit) stored values: no table, the same chain in float64.
    lo, hi = stored_range(min(bits_stored, 32), pixel_representation)
    values = np.clip(stored.astype(np.int64), lo, hi)
    modality = np.asarray(apply_modality_lut(values, ds), dtype=np.float64)
    ends = np.asarray(apply_modality_lut(np.array([lo, hi], dtype=np.int64), ds))
    out = _voi(modality, ds, t, (float(ends.min()), float(ends.max())))
    if t.invert:
        out = 1.0 - out
    return out.astype(np.float32)
