"""Is this an image the model may assess? (``check_header``, ``check_pixels``, ``check_image``)

The model reads frontal chest radiographs prepared for presentation. A DICOM file that
decodes is not necessarily one: a CT slice, a knee, a lateral view, raw detector data or
a blank square all decode. The gate turns what the header says and what the display
pixels show into :class:`Finding` objects, each with a stable ``code`` and a message a
radiographer understands (what is wrong, what to send instead).

Domain objects only: whoever calls the gate decides what a finding means for them
(refuse, warn, log). No finding quotes patient data; the only header values a message
may quote are Code Strings already validated by :mod:`imaging.header` (``CT``, ``HIP``,
``LL``).

Forgiving on purpose where real files are untidy: an absent BodyPartExamined is not a
finding (many real chest files lack it), and chest terms are matched loosely (``CHEST_PA``,
``THORACIC``, ``TORAX``). Strict where the header is explicit: a named modality other
than CR/DX, a lateral ViewPosition, "FOR PROCESSING" data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from imaging.display import MIN_CONTRAST, display_contrast
from imaging.header import HeaderFacts


@dataclass(frozen=True)
class Finding:
    """Why the model should not assess an image.

    ``code``: stable machine code, one of the module constants below. ``message``: one or
    two sentences saying what is wrong and what to send instead; never patient data.
    """

    code: str
    message: str


UNSUPPORTED_MODALITY = "unsupported_modality"
NOT_CHEST = "not_chest"
LATERAL_VIEW = "lateral_view"
NOT_FOR_PRESENTATION = "not_for_presentation"
BLANK_IMAGE = "blank_image"

#: the modalities of chest radiographs: computed and digital radiography
CHEST_MODALITIES = frozenset({"CR", "DX"})

#: ViewPosition values of a lateral projection. Lateral decubitus (LLD, RLD: a frontal
#: beam through a patient lying on one side) and obliques are not lateral projections.
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL"})

#: the "For Processing" image storage SOP classes (raw detector data, PS3.4 B.5)
FOR_PROCESSING_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
        "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography X-Ray - For Processing
        "1.2.840.10008.5.1.4.1.1.1.3.1",  # Digital Intra-Oral X-Ray - For Processing
    }
)

# Whole words of a chest BodyPartExamined beyond the substrings below (English, Spanish
# / Portuguese, Italian); CS values separate words with spaces or underscores.
_CHEST_WORDS = frozenset({"LUNG", "LUNGS", "TORAX", "TORACE"})
_CHEST_SUBSTRINGS = ("CHEST", "THORA")
_CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")


def is_chest_body_part(value: str) -> bool:
    """Whether a BodyPartExamined Code String names the chest (``CHEST``, ``THORAX``,
    ``LUNGS``, ``CHEST_PA``, ``CHESTABDOMEN``, ``PORT CHEST``, ``THORACIC``, ``TORAX``...).
    """
    text = value.strip().upper()
    if any(part in text for part in _CHEST_SUBSTRINGS):
        return True
    return any(word in _CHEST_WORDS for word in re.split(r"[ _]+", text))


def _quoted(value: str | None) -> str | None:
    """``'CT'`` for a valid Code String, None for anything else (never free text)."""
    if value is None:
        return None
    text = value.strip().upper()
    return f"'{text}'" if _CODE_STRING.fullmatch(text) else None


def _modality_finding(modality: str | None) -> Finding | None:
    if modality is not None and modality.strip().upper() in CHEST_MODALITIES:
        return None
    if modality is None or not modality.strip():
        what = "The header names no modality"
    else:
        quoted = _quoted(modality)
        what = (
            f"The header's modality is {quoted}" if quoted else "The header's modality is unknown"
        )
    return Finding(
        UNSUPPORTED_MODALITY,
        f"{what}; the model reads chest radiographs only (modality CR or DX). "
        "Send the chest radiograph itself.",
    )


def _body_part_finding(body_part: str | None) -> Finding | None:
    if body_part is None or is_chest_body_part(body_part):
        return None
    quoted = _quoted(body_part) or "another body part"
    return Finding(
        NOT_CHEST,
        f"The header says the body part examined is {quoted}, not the chest; the model "
        "reads chest radiographs only. Send a chest radiograph.",
    )


def _view_finding(view_position: str | None) -> Finding | None:
    if view_position is None or view_position.strip().upper() not in LATERAL_VIEWS:
        return None
    return Finding(
        LATERAL_VIEW,
        f"This is a lateral view (ViewPosition {_quoted(view_position)}); the model was "
        "trained on frontal views. Send the PA or AP image of the study.",
    )


def _presentation_finding(facts: HeaderFacts) -> Finding | None:
    raw = facts.presentation_intent_type == "FOR PROCESSING"
    if not raw and facts.sop_class_uid not in FOR_PROCESSING_SOP_CLASSES:
        return None
    return Finding(
        NOT_FOR_PRESENTATION,
        "This is raw detector data ('For Processing'), not an image prepared for viewing. "
        "Send the 'For Presentation' image of the same exposure.",
    )


def _blank_finding(facts: HeaderFacts | None) -> Finding:
    if facts is not None and facts.voi_source in ("window", "voi_lut_sequence"):
        what = "window" if facts.voi_source == "window" else "VOI LUT"
        detail = (
            f"the header's {what} leaves no contrast, and neither does the full range "
            "of stored values tried in its place"
        )
    elif facts is not None and facts.voi_fallback:
        detail = "the header's window was already replaced by the full stored range"
    else:
        detail = "the display chain leaves no contrast"
    return Finding(
        BLANK_IMAGE,
        f"The image is blank: {detail}, so there is nothing to assess. Check the file "
        "at the modality or PACS and send the radiograph as it is shown to a reader.",
    )


def check_header(facts: HeaderFacts) -> list[Finding]:
    """Findings from the header alone, in the order modality, body part, view, intent.

    An empty list means the header does not object; it does not prove a chest.
    """
    found = [
        _modality_finding(facts.modality),
        _body_part_finding(facts.body_part_examined),
        _view_finding(facts.view_position),
        _presentation_finding(facts),
    ]
    return [f for f in found if f is not None]


def check_pixels(pixels: npt.NDArray[np.float32]) -> list[Finding]:
    """``[blank_image]`` when display ``pixels`` (float32 ``(rows, columns)`` in [0, 1])
    have no contrast (:func:`imaging.display.display_contrast` under ``MIN_CONTRAST``),
    else ``[]``. About 1 ms on 2048 x 2048 (a strided subsample, no full pass).
    """
    return [_blank_finding(None)] if display_contrast(pixels) < MIN_CONTRAST else []


def check_image(
    facts: HeaderFacts, pixels: npt.NDArray[np.float32], contrast: float | None = None
) -> list[Finding]:
    """:func:`check_header` then :func:`check_pixels`, for ``read_dicom``'s outputs.

    ``contrast``: the pixels' display contrast when already measured
    (``DecodedImage.contrast``); measured here otherwise (about what :func:`check_pixels`
    costs). The blank finding's message uses ``facts`` to say whether the header's VOI and
    the stored range were both tried.
    """
    found = check_header(facts)
    if (display_contrast(pixels) if contrast is None else contrast) < MIN_CONTRAST:
        found.append(_blank_finding(facts))
    return found


__all__ = [
    "BLANK_IMAGE",
    "CHEST_MODALITIES",
    "FOR_PROCESSING_SOP_CLASSES",
    "LATERAL_VIEW",
    "LATERAL_VIEWS",
    "NOT_CHEST",
    "NOT_FOR_PRESENTATION",
    "UNSUPPORTED_MODALITY",
    "Finding",
    "check_header",
    "check_image",
    "check_pixels",
    "is_chest_body_part",
]
