"""Domain errors of the imaging path.

Each error carries a stable machine-readable ``code`` and the HTTP status the service
maps it to (400: the bytes are not a usable DICOM file; 422: a valid DICOM that cannot be
assessed). Messages say what is wrong and, where there is one, how to fix it. They never
contain patient identifiers or raw header values beyond technical facts (sizes, UIDs of
transfer syntaxes, photometric interpretations).
"""

from __future__ import annotations


class ImagingError(Exception):
    """Base class: an input the imaging path refuses."""

    code: str = "imaging_error"
    http_status: int = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotDicomError(ImagingError):
    """The bytes are not a DICOM file or dataset (random bytes, a PNG, a text file)."""

    code = "not_dicom"
    http_status = 400


class CorruptDicomError(ImagingError):
    """The bytes start like DICOM but cannot be parsed or their pixel data do not decode."""

    code = "corrupt_dicom"
    http_status = 400


class TruncatedDicomError(CorruptDicomError):
    """The file ends before its declared content (header or pixel data) is complete."""

    code = "truncated_dicom"


class NoPixelDataError(ImagingError):
    """A valid DICOM dataset without an image (a structured report, a presentation state)."""

    code = "no_pixel_data"
    http_status = 422


class ColourImageError(ImagingError):
    """A colour image (RGB, YBR, palette): chest radiographs are single-channel grayscale."""

    code = "colour_image"
    http_status = 422


class MultiFrameError(ImagingError):
    """More than one frame: a radiograph is one frame; split the series first."""

    code = "multi_frame"
    http_status = 422


class UnsupportedTransferSyntaxError(ImagingError):
    """The pixel data are encoded in a transfer syntax no installed decoder handles."""

    code = "unsupported_transfer_syntax"
    http_status = 422


class PixelBudgetError(ImagingError):
    """The header declares more pixels than the configured budget allows."""

    code = "image_too_large"
    http_status = 422


class UnsupportedImageError(ImagingError):
    """A grayscale image whose pixel description cannot be assessed (e.g. float pixels)."""

    code = "unsupported_image"
    http_status = 422
