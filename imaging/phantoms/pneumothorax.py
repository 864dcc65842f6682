"""Pneumothorax: an exact mask of the pleural air space and its rendering.

The air collects between the chest wall and the collapsed lung, thickest where it started
(apex for small ones, apico-lateral for large ones) and thinning away from there. The mask is
the lung pixels whose distance to the chest wall (the non-lung side of the apex and lateral
wall, above the costophrenic angle) is below ``depth * w``, with ``w`` = 1 at a seed point on
the wall falling to 0 at a radius ``reach``: a crescent along the wall. Inside it the lung
parenchyma (baseline tissue, texture, vessels) is removed, so it is darker and free of
markings; the visceral pleura is drawn as a thin slightly dense line along the lung side of
the mask, at native resolution.

Arrays are ``(rows, columns)``, origin top-left; sizes are in box units (``Frame.side``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from imaging.phantoms.anatomy import F32, Anatomy, Side

BoolMask = npt.NDArray[np.bool_]

# size 0 -> tiny apical (depth 0.4 % and reach 0.7 % of the box: < 1/64 of it wide, i.e.
# smaller than one pixel at 64 px); size 1 -> most of the lateral half of a hemithorax.
DEPTH_RANGE = (0.005, 0.11)
REACH_RANGE = (0.0075, 0.55)


@dataclass(frozen=True)
class PneumothoraxSpec:
    """``side``: the patient's side. ``size``: 0 (tiny apical) .. 1 (large), log-scaled.

    ``pleural_line_px``: visceral pleural line width at native resolution (1..3 at 2048 px).
    """

    side: Side
    size: float
    pleural_line_px: float = 2.0
    pleural_line_density: float = 0.045


def _log_lerp(bounds: tuple[float, float], t: float) -> float:
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    return float(np.exp(lo + (hi - lo) * t))


def pneumothorax_mask(anatomy: Anatomy, spec: PneumothoraxSpec) -> BoolMask:
    """Exact pneumothorax mask, bool ``(rows, columns)``; a subset of that side's lung.

    Never empty: the seed point sits on the lung's own boundary and the depth is at least
    1.5 native pixels.
    """
    if not 0.0 <= spec.size <= 1.0:
        raise ValueError(f"pneumothorax size must be in [0, 1], got {spec.size}")
    frame = anatomy.frame
    label = 1 if spec.side == "right" else 2
    marks = anatomy.landmarks[spec.side]
    t = spec.size
    depth = max(1.5, _log_lerp(DEPTH_RANGE, t) * frame.side)
    reach = max(2.5, _log_lerp(REACH_RANGE, t) * frame.side)
    # Seed moves from the apex towards the upper lateral wall as the size grows.
    apex, lateral = np.array(marks["apex"]), np.array(marks["lateral"])
    target = frame.to_px(apex + (lateral - apex) * min(1.0, t * 0.9) ** 1.5)

    # Work in a crop around the hemithorax above the costophrenic angle (speed).
    hilum_col = float(frame.to_px(np.array(marks["hilum"]))[0])
    cp_row = float(frame.to_px(np.array(marks["costophrenic"]))[1])
    r1 = int(min(frame.rows, np.ceil(cp_row)))
    if spec.side == "right":
        c0, c1 = 0, int(np.ceil(hilum_col))
    else:
        c0, c1 = int(np.floor(hilum_col)), frame.columns
    lung = anatomy.lung_label[:r1, c0:c1] == label
    if not lung.any():
        raise ValueError(f"no {spec.side} lung above the costophrenic angle")
    # Distance of every lung pixel to the nearest non-lung pixel of the crop (the chest wall,
    # the apex cap and the upper mediastinal border).
    dist = cv2.distanceTransform(lung.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)

    rr, cc = np.nonzero(lung)
    d2 = (cc + c0 - target[0]) ** 2 + (rr - target[1]) ** 2
    seed = int(np.argmin(d2 + 1e6 * (dist[rr, cc] > 1.5)))  # nearest boundary pixel
    seed_rc = (rr[seed], cc[seed] + c0)
    d2 = (cc + c0 - seed_rc[1]) ** 2 + (rr - seed_rc[0]) ** 2
    weight = np.clip(1.0 - d2 / reach**2, 0.0, 1.0)
    # Taper to nothing before the crop's cut edges (costophrenic level, hilum) so that large
    # pneumothoraces end in a smooth visceral line instead of a straight cut.
    taper = 0.12 * frame.side
    weight *= np.clip((r1 - 1 - rr) / taper, 0.0, 1.0)
    medial = (c1 - c0 - 1 - cc) if spec.side == "right" else cc
    weight *= np.clip(medial / taper, 0.0, 1.0)
    inside = dist[rr, cc] <= depth * weight
    mask = np.zeros((frame.rows, frame.columns), bool)
    mask[rr[inside], cc[inside] + c0] = True
    mask[seed_rc] = True
    return mask


def render_with_pneumothorax(
    anatomy: Anatomy, mask: BoolMask | None, spec: PneumothoraxSpec | None
) -> F32:
    """Total density float32 ``(rows, columns)``: background + parenchyma outside ``mask``
    + the visceral pleural line. ``mask=None`` renders the chest without pneumothorax."""
    density = anatomy.background + anatomy.parenchyma
    if mask is None or spec is None or not mask.any():
        return density
    rr, cc = np.nonzero(mask)
    pad = int(np.ceil(spec.pleural_line_px)) + 2
    r0, r1 = max(0, rr.min() - pad), min(mask.shape[0], rr.max() + pad + 1)
    c0, c1 = max(0, cc.min() - pad), min(mask.shape[1], cc.max() + pad + 1)
    sub_mask = mask[r0:r1, c0:c1]
    sub = density[r0:r1, c0:c1]
    sub -= anatomy.parenchyma[r0:r1, c0:c1] * sub_mask  # air: no tissue, no markings
    # Visceral pleura: a ring just outside the mask, on the lung side.
    k = max(1, round(spec.pleural_line_px))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    grown = cv2.dilate(sub_mask.astype(np.uint8), kernel).astype(bool)
    lung = anatomy.lung_label[r0:r1, c0:c1] > 0
    line = grown & ~sub_mask & lung
    # Lines thinner than a pixel (small images) are drawn 1 px wide with less contrast.
    sub += line * np.float32(spec.pleural_line_density * min(1.0, spec.pleural_line_px))
    return density
