"""Technical header facts of a radiograph, without patient identifiers.

Only the elements named in :class:`HeaderFacts` are read; nothing that identifies a
patient, a study or an institution leaves this module. Text elements are reported only
when they are valid Code Strings (or, for the SOP class, a dotted-number UID): free text
never leaves.
"""

from __future__ import annotations

import math
import re
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

    ``body_part_examined`` and ``presentation_intent_type`` are the header's values
    stripped and upper-cased, and only when they are valid DICOM Code Strings (A-Z, 0-9,
    space, underscore, at most 16 characters); ``sop_class_uid`` only when it is a
    dotted-number UID. Otherwise (absent, free text) ``None``.

    Display fields (set by :meth:`with_display`): ``voi_source`` and ``voi_function`` say
    which VOI was applied (``"voi_lut_sequence"``, ``"window"`` or ``"stored_range"``);
    ``window_center`` / ``window_width`` quote the header's first window whenever that
    window was chosen, also when it was then replaced by the stored range; in that case
    ``voi_source`` is ``"stored_range"`` and ``voi_fallback`` is a one-sentence note
    saying why (``None`` when the header's VOI was kept). Only
    :func:`imaging.dicom.read_dicom` sees the pixels, so only it can fall back: the facts
    of :func:`imaging.dicom.read_header` report the header's choice and never a fallback.
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
    body_part_examined: str | None = None
    presentation_intent_type: str | None = None
    sop_class_uid: str | None = None
    voi_source: str | None = None
    window_center: float | None = None
    window_width: float | None = None
    voi_function: str | None = None
    voi_fallback: str | None = None

    def with_display(self, t: DisplayTransform) -> HeaderFacts:
        """These facts plus what the display chain will do."""
        return replace(
            self,
            voi_source=t.voi_source,
            window_center=t.window_center,
            window_width=t.window_width,
            voi_function=t.voi_function,
            voi_fallback=t.fallback,
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


#: a DICOM Code String (PS3.5 6.2, CS): upper case, digits, space, underscore; <= 16
_CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")
#: a UID: dotted numbers, at most 64 characters (PS3.5 9.1)
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def _code_string(ds: Dataset, keyword: str) -> str | None:
    """The stripped, upper-cased value of a CS element; None unless it is a valid CS."""
    value = ds.get(keyword)
    if value is None or not isinstance(value, str):  # multi-valued or binary: not a code
        return None
    text = value.strip().upper()
    return text if _CODE_STRING.fullmatch(text) else None


def _uid(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text if len(text) <= 64 and _UID.fullmatch(text) else None


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
        body_part_examined=_code_string(ds, "BodyPartExamined"),
        presentation_intent_type=_code_string(ds, "PresentationIntentType"),
        sop_class_uid=_uid(ds, "SOPClassUID"),
    )
