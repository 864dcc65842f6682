"""Letterbox geometry between an original image grid and a square model grid.

Aspect policy: **letterbox**. The whole image is scaled so its longer side equals the
model resolution ``R`` and centred in an ``R x R`` square; the rest is padding. Nothing
is cropped, because pneumothoraces are apical and peripheral, exactly where a crop cuts.

Coordinate system (used everywhere in sharpcxr): ``(row, column)`` = ``(y, x)`` with the
origin at the top-left corner of the image. Continuous coordinates are **edge-based**:
pixel ``(r, c)`` covers ``[r, r + 1) x [c, c + 1)`` and its centre is ``(r + 0.5, c + 0.5)``.
The forward map is, per axis, ``model = offset + original * scale`` with
``scale = content / original`` (content = the resized image's size inside the square), so
the inverse is exact: ``original = (model - offset) / scale``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

MIN_RESOLUTION = 16
MAX_RESOLUTION = 4096


@dataclass(frozen=True)
class LetterboxGeometry:
    """Where an original ``rows x columns`` image sits inside the ``R x R`` model input.

    ``content_rows x content_columns`` is the resized image's size, placed with its
    top-left corner at ``(offset_y, offset_x)`` of the model grid.
    """

    rows: int
    columns: int
    resolution: int
    content_rows: int
    content_columns: int
    offset_y: int
    offset_x: int

    @classmethod
    def fit(cls, rows: int, columns: int, resolution: int) -> LetterboxGeometry:
        """Letterbox ``rows x columns`` into ``resolution x resolution`` (longer side fills)."""
        if rows < 1 or columns < 1:
            raise ValueError(f"image size must be positive, got {rows}x{columns}")
        if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
            raise ValueError(
                f"resolution must be in {MIN_RESOLUTION}..{MAX_RESOLUTION}, got {resolution}"
            )
        longer = max(rows, columns)
        content_rows = max(1, round(rows * resolution / longer))
        content_columns = max(1, round(columns * resolution / longer))
        return cls(
            rows=rows,
            columns=columns,
            resolution=resolution,
            content_rows=content_rows,
            content_columns=content_columns,
            offset_y=(resolution - content_rows) // 2,
            offset_x=(resolution - content_columns) // 2,
        )

    @property
    def scale_y(self) -> float:
        """Model pixels per original pixel along rows."""
        return self.content_rows / self.rows

    @property
    def scale_x(self) -> float:
        """Model pixels per original pixel along columns."""
        return self.content_columns / self.columns

    # ------------------------------------------------------------------ points and boxes
    def to_model(self, points_yx: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map continuous ``(y, x)`` points, shape ``(..., 2)``, from original to model grid."""
        pts = np.asarray(points_yx, dtype=np.float64)
        out = np.empty_like(pts)
        out[..., 0] = self.offset_y + pts[..., 0] * self.scale_y
        out[..., 1] = self.offset_x + pts[..., 1] * self.scale_x
        return out

    def to_original(self, points_yx: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map continuous ``(y, x)`` points, shape ``(..., 2)``, from model to original grid.

        Exact inverse of :meth:`to_model`; points in the padding map outside the image.
        """
        pts = np.asarray(points_yx, dtype=np.float64)
        out = np.empty_like(pts)
        out[..., 0] = (pts[..., 0] - self.offset_y) / self.scale_y
        out[..., 1] = (pts[..., 1] - self.offset_x) / self.scale_x
        return out

    def box_to_original(
        self, box_yxyx: npt.ArrayLike, *, clip: bool = True
    ) -> npt.NDArray[np.float64]:
        """Map continuous edge boxes ``(y_min, x_min, y_max, x_max)``, shape ``(..., 4)``.

        With ``clip`` the result is clipped to the image ``[0, rows] x [0, columns]``.
        """
        b = np.asarray(box_yxyx, dtype=np.float64)
        out = np.concatenate(
            [self.to_original(b[..., 0:2]), self.to_original(b[..., 2:4])], axis=-1
        )
        if clip:
            out[..., 0::2] = np.clip(out[..., 0::2], 0.0, self.rows)
            out[..., 1::2] = np.clip(out[..., 1::2], 0.0, self.columns)
        return out

    def box_to_model(self, box_yxyx: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map continuous edge boxes ``(y_min, x_min, y_max, x_max)`` to the model grid."""
        b = np.asarray(box_yxyx, dtype=np.float64)
        return np.concatenate([self.to_model(b[..., 0:2]), self.to_model(b[..., 2:4])], axis=-1)

    # ------------------------------------------------------------------ rasters
    def _content(self, model_grid: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """The part of an ``(R, R)`` model-grid array that holds the image (no padding)."""
        return model_grid[
            self.offset_y : self.offset_y + self.content_rows,
            self.offset_x : self.offset_x + self.content_columns,
        ]

    def _nearest_indices(self) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """For each original pixel centre, the index of the model pixel containing it."""
        ys = self.offset_y + (np.arange(self.rows) + 0.5) * self.scale_y
        xs = self.offset_x + (np.arange(self.columns) + 0.5) * self.scale_x
        last = self.resolution - 1
        return (
            np.clip(np.floor(ys).astype(np.intp), 0, last),
            np.clip(np.floor(xs).astype(np.intp), 0, last),
        )

    def mask_to_original(self, mask: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """Map a binary mask on the model grid ``(R, R)`` to the original ``(rows, columns)``.

        Each original pixel takes the value of the model pixel containing its centre.
        (Two ``np.take`` passes: exact, and ~6 ms for 2500x3000, where cv2's
        ``INTER_NEAREST_EXACT`` rounds differently on some pixels.)
        """
        self._check_model_shape(mask)
        return self._take_nearest(np.asarray(mask, dtype=bool))

    def _take_nearest(self, model_grid: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """``(R, R)`` -> ``(rows, columns)``: each original pixel takes the model pixel
        containing its centre (two ``np.take`` passes: rows, then columns)."""
        iy, ix = self._nearest_indices()
        return np.take(np.take(model_grid, iy, axis=0), ix, axis=1)

    def mask_to_model(self, mask: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """Map a binary mask on the original grid to the model grid ``(R, R)``.

        A model pixel is set when at least half of its area is covered (area resampling),
        so small findings shrink the way they do in the downsampled image. Padding is False.
        """
        if mask.shape != (self.rows, self.columns):
            raise ValueError(f"mask shape {mask.shape} != image {(self.rows, self.columns)}")
        area = cv2.resize(
            np.asarray(mask, dtype=np.float32),
            (self.content_columns, self.content_rows),
            interpolation=cv2.INTER_AREA,
        )
        out = np.zeros((self.resolution, self.resolution), dtype=bool)
        out[
            self.offset_y : self.offset_y + self.content_rows,
            self.offset_x : self.offset_x + self.content_columns,
        ] = area >= 0.5
        return out

    def grid_to_original(
        self, grid: npt.NDArray[Any], *, interpolation: str = "linear"
    ) -> npt.NDArray[np.float32]:
        """Resample a square grid covering the whole model input onto the original grid.

        ``grid`` has shape ``(G, G)`` (e.g. a Grad-CAM at ``R/32``, or ``R`` itself); cell
        ``k`` covers model pixels ``[k*R/G, (k+1)*R/G)``. Returns float32
        ``(rows, columns)``, sampled at each original pixel centre with bilinear
        (``"linear"``) or ``"nearest"`` interpolation, edges replicated.
        """
        g = np.asarray(grid, dtype=np.float32)
        if g.ndim != 2 or g.shape[0] != g.shape[1]:
            raise ValueError(f"grid must be square 2-D, got shape {g.shape}")
        if interpolation not in ("linear", "nearest"):
            raise ValueError(f"interpolation must be 'linear' or 'nearest', not {interpolation!r}")
        if g.shape[0] == self.resolution:
            if interpolation == "nearest":
                return self._take_nearest(g)
            # The content region covers exactly the original image and cv2.resize samples
            # pixel centres ((i + 0.5) * scale), so this is the exact inverse map.
            content = np.ascontiguousarray(self._content(g))
            out = cv2.resize(content, (self.columns, self.rows), interpolation=cv2.INTER_LINEAR)
            return np.asarray(out, dtype=np.float32)
        cell = self.resolution / g.shape[0]
        # original pixel (r, c) (centre r + 0.5) -> model edge coordinate
        # offset + (r + 0.5) * scale -> grid index coordinate (centre-based) y / cell - 0.5.
        affine = np.array(
            [
                [self.scale_x / cell, 0.0, (self.offset_x + 0.5 * self.scale_x) / cell - 0.5],
                [0.0, self.scale_y / cell, (self.offset_y + 0.5 * self.scale_y) / cell - 0.5],
            ],
            dtype=np.float64,
        )
        flag = cv2.INTER_LINEAR if interpolation == "linear" else cv2.INTER_NEAREST
        out = cv2.warpAffine(
            g,
            affine,
            (self.columns, self.rows),
            flags=flag | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        return np.asarray(out, dtype=np.float32)

    def _check_model_shape(self, array: npt.NDArray[Any]) -> None:
        if array.shape != (self.resolution, self.resolution):
            raise ValueError(
                f"expected a model-grid array of shape {(self.resolution,) * 2}, got {array.shape}"
            )
