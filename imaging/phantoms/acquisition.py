"""Acquisition: how a site turns a density map into stored pixel values.

Order of operations, mirroring a real exam: patient rotation on the detector (density and
masks rotated identically), quantum noise (Poisson approximated as Gaussian; more noise where
fewer photons arrive, i.e. behind dense anatomy), the site's contrast curve to display values
in [0, 1] (higher = denser = brighter), collimation (unexposed borders), burned-in lead
markers, then quantisation to ``bits_stored`` and the photometric interpretation
(MONOCHROME1 stores ``2**bits - 1 - v``).

Arrays are ``(rows, columns)``, origin top-left.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from imaging.phantoms.anatomy import F32, Frame

Photometric = Literal["MONOCHROME1", "MONOCHROME2"]
MU = 3.0  # attenuation per density unit: transmission through the trunk ~ exp(-3)
DENSITY_MAX = 1.35  # density mapped to display 1.0 by the contrast curves


@dataclass(frozen=True)
class SiteProfile:
    """Acquisition settings of one site (see ``docs/phantoms.md``).

    ``curve``: ``sigmoid`` (film-like, centre/width in density units) or ``gamma``.
    ``photons_per_mm2``: detector photons per mm^2 at zero density (lower = noisier).
    ``field_of_view_mm``: physical width of the anatomy box; pixel spacing = fov / box side.
    ``collimation``: fraction of each border outside the collimated field (0 = none);
    ``collimation_value``: display value there (1.0 = unexposed, bright).
    ``marker``: burned-in letter (``R`` on the image left) or None.
    ``max_rotation_deg``: patient rotation drawn uniformly in +-this (0 = none).
    """

    name: str
    curve: Literal["sigmoid", "gamma"]
    curve_center: float
    curve_width: float
    gamma: float
    photons_per_mm2: float
    field_of_view_mm: float
    photometric: Photometric
    modality: Literal["CR", "DX"]
    collimation: float
    collimation_value: float
    marker: str | None
    max_rotation_deg: float
    window: bool = True
    rescale: bool = False


SITES: dict[str, SiteProfile] = {
    "a": SiteProfile(
        name="a",
        curve="sigmoid",
        curve_center=0.62,
        curve_width=0.17,
        gamma=1.0,
        photons_per_mm2=60000.0,
        field_of_view_mm=380.0,
        photometric="MONOCHROME2",
        modality="DX",
        collimation=0.0,
        collimation_value=1.0,
        marker=None,
        max_rotation_deg=0.0,
    ),
    "b": SiteProfile(
        name="b",
        curve="gamma",
        curve_center=0.0,
        curve_width=1.0,
        gamma=1.7,
        photons_per_mm2=15000.0,
        field_of_view_mm=430.0,
        photometric="MONOCHROME1",
        modality="CR",
        collimation=0.05,
        collimation_value=0.97,
        marker="R",
        max_rotation_deg=4.0,
        rescale=True,
    ),
}


def site_profile(name: str, **overrides: Any) -> SiteProfile:
    """The profile of site ``name`` (``a`` or ``b``), with fields replaced by ``overrides``."""
    if name not in SITES:
        raise ValueError(f"unknown site {name!r}; known: {', '.join(sorted(SITES))}")
    return dataclasses.replace(SITES[name], **overrides)


def pixel_spacing_mm(frame: Frame, site: SiteProfile) -> float:
    """Square pixel spacing (mm): the site's field of view spread over the box side."""
    return site.field_of_view_mm / frame.side


def contrast_curve(density: F32, site: SiteProfile) -> F32:
    """Map density to display values in [0, 1] (monotone increasing), float32."""
    if site.curve == "sigmoid":
        lo = 1.0 / (1.0 + np.exp(site.curve_center / site.curve_width))
        hi = 1.0 / (1.0 + np.exp(-(DENSITY_MAX - site.curve_center) / site.curve_width))
        z = (density - np.float32(site.curve_center)) * np.float32(-1.0 / site.curve_width)
        out = (1.0 / (1.0 + np.exp(z)) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    else:
        # Gamma on transmitted exposure, flipped: a flatter, greyer look than site a.
        exposure = np.clip(1.0 - density * np.float32(1.0 / DENSITY_MAX), 0.0, 1.0)
        out = 1.0 - exposure ** np.float32(site.gamma)
    return np.asarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def rotate(
    density: F32, masks: list[npt.NDArray[Any]], angle_deg: float
) -> tuple[F32, list[npt.NDArray[Any]]]:
    """Rotate about the image centre (positive = counter-clockwise on display).

    Density is interpolated bilinearly (air fills the corners); masks use nearest-neighbour
    with the very same matrix, so they stay aligned with the image.
    """
    rows, cols = density.shape
    mat = cv2.getRotationMatrix2D(((cols - 1) / 2.0, (rows - 1) / 2.0), angle_deg, 1.0)
    out = np.asarray(
        cv2.warpAffine(density, mat, (cols, rows), flags=cv2.INTER_LINEAR, borderValue=0.0),
        dtype=np.float32,
    )
    rotated = []
    for m in masks:
        r = cv2.warpAffine(m.astype(np.uint8), mat, (cols, rows), flags=cv2.INTER_NEAREST)
        rotated.append(r.astype(m.dtype))
    return out, rotated


def add_quantum_noise(density: F32, rng: np.random.Generator, photons_per_pixel: float) -> F32:
    """Add Gaussian-approximated Poisson noise in the log (density) domain.

    Counts N = N0 exp(-MU D); the log signal then has standard deviation 1 / sqrt(N), i.e.
    exp(MU D / 2) / (MU sqrt(N0)) in density units.
    """
    sigma = np.exp(density * np.float32(MU / 2.0))
    sigma *= np.float32(1.0 / (MU * np.sqrt(photons_per_pixel)))
    noise = rng.standard_normal(density.shape, dtype=np.float32)
    noise *= sigma
    noise += density
    return noise


def collimate(display: F32, site: SiteProfile, rng: np.random.Generator) -> F32:
    """Set the borders outside the collimated field to ``collimation_value`` (in place)."""
    if site.collimation <= 0:
        return display
    rows, cols = display.shape
    f = site.collimation * rng.uniform(0.6, 1.4, 4)
    top, bottom = int(f[0] * rows * 0.5), rows - int(f[1] * rows)
    left, right = int(f[2] * cols), cols - int(f[3] * cols)
    field = np.zeros_like(display, dtype=bool)
    field[top:bottom, left:right] = True
    display[~field] = np.float32(site.collimation_value)
    return display


def burn_marker(display: F32, text: str, frame: Frame) -> F32:
    """Burn a lead letter marker (bright letter on a grey plate) near the top-left, in place."""
    size = frame.side * 0.045
    r0 = int(frame.top + frame.side * 0.1)
    c0 = int(frame.left + frame.side * 0.06)
    r1, c1 = min(display.shape[0], r0 + int(size * 1.3)), min(display.shape[1], c0 + int(size))
    # putText draws on uint8 only: render the plate, then blend it in as display values.
    plate = np.full((r1 - r0, c1 - c0), 190, np.uint8)
    cv2.putText(
        plate,
        text,
        (int(size * 0.15), plate.shape[0] - int(size * 0.2)),
        cv2.FONT_HERSHEY_SIMPLEX,
        size / 30.0,
        255,
        max(1, round(size / 12)),
        cv2.LINE_AA,
    )
    display[r0:r1, c0:c1] = plate.astype(np.float32) / 255.0
    return display


def quantise(display: F32, bits_stored: int, photometric: Photometric) -> npt.NDArray[np.uint16]:
    """Display values [0, 1] (higher = denser) -> stored uint16 values < 2**bits_stored.

    MONOCHROME1 stores the inverted value so that a viewer applying MONOCHROME1 shows the same
    picture.
    """
    top = (1 << bits_stored) - 1
    v = np.asarray(np.clip(display, 0.0, 1.0), dtype=np.float32) * np.float32(top)
    stored = np.asarray(np.rint(v), dtype=np.uint16)
    if photometric == "MONOCHROME1":
        stored = np.asarray(top - stored, dtype=np.uint16)
    return stored
