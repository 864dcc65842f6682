"""PNG/JPEG radiographs -> display pixels (``read_raster``), for NIH ChestX-ray14 and
CheXpert, whose public releases are 8/16-bit PNG/JPEG rather than DICOM.

Output convention as :func:`imaging.dicom.read_dicom`: float32 ``(rows, columns)`` in
``[0, 1]``, higher = brighter, row 0 at the top. These releases are already display-ready
(windowed, bone white), so there is no display chain to apply.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from imaging.dicom import DEFAULT_MAX_PIXELS
from imaging.errors import ImagingError


class RasterDecodeError(ImagingError):
    """A PNG/JPEG file that cannot be decoded to a grayscale radiograph."""

    code = "corrupt_image"


def read_raster(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> npt.NDArray[np.float32]:
    """Decode an 8/16-bit PNG or JPEG radiograph to display pixels.

    Returns float32 ``(rows, columns)`` in ``[0, 1]``, higher = brighter: the convention of
    :func:`imaging.dicom.read_dicom` (NIH and CheXpert images are already display-ready,
    bone white). Colour files (a few NIH PNGs are RGBA copies of a gray image) are reduced
    to gray with the ITU-R 601 weights; alpha is dropped. Raises :class:`RasterDecodeError`.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise RasterDecodeError(f"image file unreadable: {exc.strerror}") from None
    if data.size == 0:
        raise RasterDecodeError("image file is empty")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise RasterDecodeError("image file is not a decodable PNG/JPEG")
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = image[:, :, :3]
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim != 2 or image.size == 0:
        raise RasterDecodeError(f"unsupported raster shape {image.shape}")
    if image.size > max_pixels:
        raise RasterDecodeError(f"{image.shape[0]} x {image.shape[1]} is over the pixel budget")
    if image.dtype == np.uint8:
        scale = 1.0 / 255.0
    elif image.dtype == np.uint16:
        scale = 1.0 / 65535.0
    else:
        raise RasterDecodeError(f"unsupported raster sample type {image.dtype}")
    return np.multiply(image, scale, dtype=np.float32)
