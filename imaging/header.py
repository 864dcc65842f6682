"""Technical header facts of a radiograph, without patient identifiers.

Only the elements named in :class:`HeaderFacts` are read; nothing that identifies a
patient, a study or an institution leaves this module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID

from imaging.display import DisplayTransform


@dataclass(frozen=True)
class HeaderFacts:
    """What the header says about the image, in plain types (JSON-serialisable).

    ``pixel_spacing_mm`` is ``(row spacing, column spacing)`` in mm, from PixelSpacing,
    else ImagerPixelSpacing; ``None`` when absent, zero, negative or malformed.
    """

    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    transfer_syntax_uid: str
    transfer_syntax_name: str
    modality: str | None
    view_position: str | None
    pixel_spacing_mm: tuple[float, float] | None
    pixel_spacing_source: str | None
    voi_source: str | None = None
    window_center: float | None = None
    window_width: float | None = None
    voi_function: str | None = None

    def with_display(self, t: DisplayTransform) -> HeaderFacts:
        """These facts plus what the display chain will do."""
        return replace(
            self,
            voi_source=t.voi_source,
            window_center=t.window_center,
            window_width=t.window_width,
            voi_function=t.voi_function,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        out = asdict(self)
        if self.pixel_spacing_mm is not None:
            out["pixel_spacing_mm"] = list(self.pixel_spacing_mm)
        return out


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    # Code strings are at most 16 characters; anything longer is not a code we report.
    return text[:16] if text else None


def parse_spacing(value: Any) -> tuple[float, float] | None:
    """``(row, column)`` spacing in mm from a 2-valued DS element; None when unusable."""
    if value is None:
        return None
    try:
        parts = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(parts) != 2 or not all(math.isfinite(p) and p > 0 for p in parts):
        return None
    return parts[0], parts[1]


def header_facts(ds: Dataset, tsyntax: UID) -> HeaderFacts:
    """Collect :class:`HeaderFacts` from a dataset already checked by ``check_dataset``."""
    spacing, source = None, None
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            spacing = parse_spacing(ds.get(keyword))
        except Exception:  # a malformed DS value is "unknown", not an error
            spacing = None
        if spacing is not None:
            source = keyword
            break
    bits_allocated = int(ds.BitsAllocated)
    return HeaderFacts(
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        bits_allocated=bits_allocated,
        bits_stored=int(ds.get("BitsStored", bits_allocated) or bits_allocated),
        pixel_representation=int(ds.get("PixelRepresentation", 0) or 0),
        photometric_interpretation=str(ds.PhotometricInterpretation).strip().upper(),
        transfer_syntax_uid=str(tsyntax),
        transfer_syntax_name=tsyntax.name if tsyntax.is_transfer_syntax else "unknown",
        modality=_text(ds, "Modality"),
        view_position=_text(ds, "ViewPosition"),
        pixel_spacing_mm=spacing,
        pixel_spacing_source=source,
    )
