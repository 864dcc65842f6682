"""Domain errors of the imaging path.

Each error carries a stable machine-readable ``code``; the codes are the contract. The
imaging path knows nothing of HTTP: whoever serves it maps codes to transport statuses in
one place of its own. Two families: the bytes are not a usable DICOM file
(``not_dicom``, ``corrupt_dicom``, ``truncated_dicom``), and a valid DICOM that cannot be
assessed (every other code). Messages say what is wrong and, where there is one, how to
fix it, without naming any deployment setting. They never contain patient identifiers or
raw header values beyond technical facts (sizes, UIDs of transfer syntaxes, photometric
interpretations).
"""

from __future__ import annotations


class ImagingError(Exception):
    """Base class: an input the imaging path refuses."""

    code: str = "imaging_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotDicomError(ImagingError):
    """The bytes are not a DICOM file or dataset (random bytes, a PNG, a text file)."""

    code = "not_dicom"


class CorruptDicomError(ImagingError):
    """The bytes start like DICOM but cannot be parsed or their pixel data do not decode."""

    code = "corrupt_dicom"


class TruncatedDicomError(CorruptDicomError):
    """The file ends before its declared content (header or pixel data) is complete."""

    code = "truncated_dicom"


class NoPixelDataError(ImagingError):
    """A valid DICOM dataset without an image (a structured report, a presentation state)."""

    code = "no_pixel_data"


class ColourImageError(ImagingError):
    """A colour image (RGB, YBR, palette): chest radiographs are single-channel grayscale."""

    code = "colour_image"


class MultiFrameError(ImagingError):
    """More than one frame: a radiograph is one frame; split the series first."""

    code = "multi_frame"


class UnsupportedTransferSyntaxError(ImagingError):
    """The pixel data are encoded in a transfer syntax no installed decoder handles."""

    code = "unsupported_transfer_syntax"


class PixelBudgetError(ImagingError):
    """The header declares more pixels than the configured budget allows."""

    code = "image_too_large"


class UnsupportedImageError(ImagingError):
    """A grayscale image whose pixel description cannot be assessed (e.g. float pixels)."""

    code = "unsupported_image"


class CodestreamMismatchError(CorruptDicomError):
    """The compressed frame's own header contradicts the DICOM header (another size, more
    components, wider samples, a wrong RLE segment count): refused before any decoder runs,
    because a decoder sizes its output from the codestream."""

    code = "codestream_mismatch"


class DecompressionBombError(PixelBudgetError):
    """Compressed data would inflate past what any image within the pixel budget needs
    (a deflated dataset): refused while inflating, before the memory is spent."""

    code = "decompression_bomb"
