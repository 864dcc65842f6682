"""Display pixels -> model input at resolution ``R`` (``preprocess``), and back.

Input convention (from :func:`imaging.dicom.read_dicom`): float32 ``(rows, columns)`` in
``[0, 1]``, higher = denser/brighter, row 0 at the top.

Output convention (the ONNX input ``image`` of DESIGN.md): float32 ``(1, R, R)`` (add the
batch axis to get ``[N, 1, R, R]``), ``(display - MEAN) / STD`` so the image spans
``[-2, 2]``; the letterbox padding is display value 0 (black, i.e. -2 after normalising).

Geometry: letterbox (see :mod:`imaging.geometry`); the image is never cropped.
Resampling: downscaling uses area averaging (``cv2.INTER_AREA``: each output pixel is the
mean of the input pixels it covers, an exact box filter for integer factors), so fine
detail is averaged away rather than aliased, as it would be by nearest or plain bilinear
decimation. Upscaling (images smaller than ``R``) is bilinear, where nothing aliases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from imaging.geometry import LetterboxGeometry

#: normalisation of the model input; recorded in every manifest entry
NORMALISATION_MEAN = 0.5
NORMALISATION_STD = 0.25
#: display value of the letterbox padding (black)
PAD_DISPLAY_VALUE = 0.0

NORMALISATION = {
    "mean": NORMALISATION_MEAN,
    "std": NORMALISATION_STD,
    "pad_display_value": PAD_DISPLAY_VALUE,
    "display_range": [0.0, 1.0],
    "orientation": "higher = denser/brighter; row 0 at top",
    "aspect": "letterbox",
    "resample": "INTER_AREA down, INTER_LINEAR up",
}

_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ModelInput:
    """``image``: float32 ``(1, R, R)`` normalised; ``geometry``: the letterbox used."""

    image: npt.NDArray[np.float32]
    geometry: LetterboxGeometry


def check_display_pixels(pixels: npt.NDArray[Any]) -> None:
    """Raise ``ValueError`` unless ``pixels`` follows the display convention (2-D float32)."""
    if pixels.ndim != 2:
        raise ValueError(f"display pixels must be 2-D (rows, columns), got shape {pixels.shape}")
    if pixels.dtype != np.float32:
        raise ValueError(f"display pixels must be float32 in [0, 1], got {pixels.dtype}")


def resize_display(
    pixels: npt.NDArray[np.float32], rows: int, columns: int
) -> npt.NDArray[np.float32]:
    """Antialiased resize of display pixels to ``(rows, columns)`` (area down, linear up)."""
    check_display_pixels(pixels)
    if pixels.shape == (rows, columns):
        return pixels.copy()
    shrinking = rows <= pixels.shape[0] and columns <= pixels.shape[1]
    flag = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = cv2.resize(pixels, (columns, rows), interpolation=flag)
    return np.asarray(out, dtype=np.float32)


def preprocess(
    pixels: npt.NDArray[np.float32],
    resolution: int,
    grid: tuple[int, int] | None = None,
) -> ModelInput:
    """Letterbox, resize and normalise display ``pixels`` to the model input at ``R``.

    ``grid``: the original image grid ``(rows, columns)`` when ``pixels`` are a reduced
    decode of it (:attr:`imaging.dicom.DecodedImage.grid`; JPEG 2000 decoded ``r`` wavelet
    levels short, pixel ``i`` covering original pixels ``[2**r i, 2**r (i + 1))``, the
    area-resizing convention). The geometry is then the letterbox of ``grid``, and the
    reduced pixels are resized to the same content box the full image would be resized
    to, so CAMs, masks and boxes map back to the original grid unchanged. None (default):
    ``pixels`` are the full image.
    """
    check_display_pixels(pixels)
    rows, columns = grid if grid is not None else pixels.shape
    geometry = LetterboxGeometry.fit(rows, columns, resolution)
    content = resize_display(pixels, geometry.content_rows, geometry.content_columns)
    lo, hi = float(content.min()), float(content.max())
    if not (lo >= -_TOLERANCE and hi <= 1 + _TOLERANCE):
        raise ValueError(f"display pixels must lie in [0, 1], found [{lo:.4g}, {hi:.4g}]")
    pad = (PAD_DISPLAY_VALUE - NORMALISATION_MEAN) / NORMALISATION_STD
    image = np.full((1, resolution, resolution), pad, dtype=np.float32)
    target = image[
        0,
        geometry.offset_y : geometry.offset_y + geometry.content_rows,
        geometry.offset_x : geometry.offset_x + geometry.content_columns,
    ]
    # (x - mean) / std written as x * a + b into the destination: no temporaries.
    np.multiply(content, 1.0 / NORMALISATION_STD, out=target)
    target -= NORMALISATION_MEAN / NORMALISATION_STD
    return ModelInput(image=image, geometry=geometry)


def model_input_to_display(image: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Undo the normalisation of a model input ``(1, R, R)`` or ``(R, R)`` -> uint8 ``(R, R)``.

    This is exactly what the model sees, for ``sharpcxr inspect --out``.
    """
    plane = image[0] if image.ndim == 3 else image
    display = plane * NORMALISATION_STD + NORMALISATION_MEAN
    return np.asarray(np.clip(np.rint(display * 255.0), 0, 255), dtype=np.uint8)
