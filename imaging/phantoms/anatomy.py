"""Frontal (PA) chest anatomy rendered as a density map (line integral of attenuation).

Coordinates: arrays are ``(rows, columns)``, origin top-left, row down, column right. Anatomy
is laid out in a square *box* of side ``S = min(rows, columns)`` pixels (``Frame``) in box
units ``(x, y)``: ``x`` = 0..1 left to right, ``y`` = 0 at the box top, growing downwards
(``y > 1`` below the box, e.g. the abdomen of a tall image). Standard PA display: the
patient's right lung is on the image left.

Density units: ~1.0 for the full soft-tissue thickness of the trunk, ~0.4 for aerated lung,
0 for air outside the body. Smooth structures are drawn at a low internal resolution and
upsampled; bones at a middle one; vessels (and, in ``pneumothorax``, the pleural line) at native
resolution because they are the fine detail that downsampling removes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
Side = Literal["right", "left"]  # the patient's side; "right" is on the image left
LOW_RES = 384  # box side of the smooth layers
MID_RES = 1024  # box side of the bone layer


@dataclass(frozen=True)
class Frame:
    """Where the anatomy box sits in a ``rows x columns`` image (native pixels)."""

    rows: int
    columns: int
    side: float
    top: float
    left: float

    @classmethod
    def for_image(cls, rows: int, columns: int) -> Frame:
        """Square box of side ``min(rows, columns)``, centred across, high in tall images."""
        side = float(min(rows, columns))
        return cls(rows, columns, side, (rows - side) * 0.3, (columns - side) / 2.0)

    def scaled_shape(self, box_px: int) -> tuple[tuple[int, int], float]:
        """(rows, columns) of a grid whose box is ``box_px`` wide (never above native), scale."""
        scale = min(1.0, box_px / self.side)
        return (max(1, round(self.rows * scale)), max(1, round(self.columns * scale))), scale

    def to_px(self, xy: npt.NDArray[np.float64], scale: float = 1.0) -> npt.NDArray[np.float64]:
        """Box units ``(..., 2)`` as ``(x, y)`` -> pixel ``(col, row)`` at ``scale``."""
        out = np.empty_like(xy, dtype=np.float64)
        out[..., 0] = (self.left + xy[..., 0] * self.side) * scale
        out[..., 1] = (self.top + xy[..., 1] * self.side) * scale
        return out


@dataclass
class Anatomy:
    """Native-resolution layers of one chest; all arrays ``(rows, columns)``.

    ``background``: float32 density of everything except lung parenchyma. ``parenchyma``:
    float32 density of lung tissue (baseline, texture, vessels), zero outside the lungs; a
    pneumothorax removes it. ``lung_label``: uint8, 0 outside, 1 right lung, 2 left lung.
    ``landmarks``: box-unit (x, y) points per side: ``apex``, ``lateral``, ``costophrenic``,
    ``hilum``.
    """

    frame: Frame
    background: F32
    parenchyma: F32
    lung_label: npt.NDArray[np.uint8]
    landmarks: dict[str, dict[str, tuple[float, float]]]


def _chaikin(points: npt.NDArray[np.float64], iterations: int = 3) -> npt.NDArray[np.float64]:
    """Corner-cutting smoothing of a closed polygon ``(N, 2)`` (keeps it inside the hull)."""
    p = points
    for _ in range(iterations):
        nxt = np.roll(p, -1, axis=0)
        p = np.stack([0.75 * p + 0.25 * nxt, 0.25 * p + 0.75 * nxt], axis=1).reshape(-1, 2)
    return p


def _fill(shape: tuple[int, int], polys: list[npt.NDArray[np.float64]]) -> npt.NDArray[np.uint8]:
    """Anti-aliased filled polygons (pixel ``(col, row)`` coords) as 0..255 uint8."""
    canvas = np.zeros(shape, np.uint8)
    pts = [np.round(p * 16).astype(np.int32) for p in polys]  # shift=4: 1/16 px precision
    cv2.fillPoly(canvas, pts, 255, cv2.LINE_AA, shift=4)
    return canvas


def _lung_outlines(rng: np.random.Generator) -> dict[str, npt.NDArray[np.float64]]:
    """Smoothed lung outlines in box units, clockwise from the apex, with patient jitter."""
    right = np.array(
        [
            (0.30, 0.09), (0.36, 0.12), (0.41, 0.20), (0.43, 0.33), (0.42, 0.48),
            (0.42, 0.60), (0.40, 0.66), (0.40, 0.71), (0.34, 0.67), (0.25, 0.645),
            (0.16, 0.70), (0.095, 0.79), (0.075, 0.62), (0.09, 0.40), (0.14, 0.21),
            (0.21, 0.12),
        ]
    )  # fmt: skip
    left = np.array(
        [
            (0.70, 0.10), (0.79, 0.13), (0.86, 0.22), (0.91, 0.40), (0.925, 0.62),
            (0.905, 0.81), (0.84, 0.72), (0.77, 0.685), (0.72, 0.72), (0.70, 0.66),
            (0.64, 0.56), (0.60, 0.46), (0.585, 0.34), (0.57, 0.27), (0.58, 0.20),
            (0.64, 0.12),
        ]
    )  # fmt: skip
    out = {}
    for name, pts in (("right", right), ("left", left)):
        jitter = rng.normal(0.0, 0.006, pts.shape)
        centre = pts.mean(axis=0)
        scale = np.array([rng.uniform(0.95, 1.04), rng.uniform(0.94, 1.05)])
        pts = centre + (pts - centre) * scale + jitter
        out[name] = _chaikin(pts)
    return out


def _body_outline(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Closed outline of neck, shoulders and trunk (box units), running below the box."""
    w = rng.uniform(-0.015, 0.015)
    half = [
        (0.42, -0.2), (0.41, 0.06), (0.30, 0.10), (0.12, 0.13), (0.02 - w, 0.19),
        (0.02 - w, 0.45), (0.035 - w, 0.75), (0.07 - w, 1.05), (0.08 - w, 2.5),
    ]  # fmt: skip
    left_side = np.array(half)
    right_side = left_side[::-1].copy()
    right_side[:, 0] = 1.0 - right_side[:, 0]
    return _chaikin(np.concatenate([left_side, right_side]), 2)


def _vessel_tree(
    rng: np.random.Generator,
    hilum: tuple[float, float],
    lateral_sign: float,
    inside: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.bool_]],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Branching vessels from one hilum: segments ``(K, 3, 2)`` (box units) and widths ``(K,)``.

    Vectorised by generation. Each branch continues almost straight (slightly narrower) and
    sends off a thinner side branch, so vessels run radially, taper, and are densest near the
    hilum. Branches whose start leaves the lung (``inside``) stop.
    """
    segs, widths = [], []
    # Trunks fan out upwards, laterally and downwards from the hilum.
    base = np.array([-120.0, -95.0, -70.0, -45.0, -20.0, 5.0, 30.0, 55.0, 80.0, 100.0])
    angles = np.deg2rad(base) + rng.normal(0, 0.08, base.size)
    angles = np.where(lateral_sign < 0, np.pi - angles, angles)
    pos = np.asarray(hilum, np.float64) + rng.normal(0, 0.012, (angles.size, 2))
    width = np.full(angles.size, 0.009) * rng.uniform(0.8, 1.2, angles.size)
    length = np.full(angles.size, 0.045)
    for _ in range(10):
        n = angles.size
        seg_len = length * rng.uniform(0.7, 1.3, n)
        direction = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        end = pos + seg_len[:, None] * direction
        bend = rng.normal(0, 0.1, n) * seg_len
        mid = (pos + end) / 2 + bend[:, None] * np.stack([-direction[:, 1], direction[:, 0]], 1)
        segs.append(np.stack([pos, mid, end], axis=1))
        widths.append(width)
        side = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        angles = np.concatenate(
            [angles + rng.normal(0, 0.12, n), angles + side * rng.uniform(0.45, 1.0, n)]
        )
        pos = np.concatenate([end, end])
        width = np.concatenate([width * 0.8, width * rng.uniform(0.45, 0.65, n)])
        length = np.concatenate([length * 0.88, length * 0.7])
        keep = inside(pos) & (width > 0.00025)
        angles, pos, width, length = angles[keep], pos[keep], width[keep], length[keep]
    return np.concatenate(segs), np.concatenate(widths)


def render_anatomy(rng: np.random.Generator, frame: Frame) -> Anatomy:
    """Render one random chest (see module docstring for units and coordinates)."""
    rows, cols = frame.rows, frame.columns
    lo_shape, lo = frame.scaled_shape(LOW_RES)
    mid_shape, mid = frame.scaled_shape(MID_RES)
    s_lo = frame.side * lo  # box side in low-res pixels

    lungs = _lung_outlines(rng)
    body_pts = frame.to_px(_body_outline(rng), lo)
    body = _fill(lo_shape, [body_pts]).astype(np.float32) / 255.0
    # Soft tissue: a rounded (cylinder-like) thickness profile from the distance to the skin.
    dist_body = cv2.distanceTransform((body > 0.5).astype(np.uint8), cv2.DIST_L2, 5)
    tissue = np.sqrt(np.clip(dist_body / (0.12 * s_lo), 0, 1)) * 0.85 + 0.15 * body
    density = tissue.astype(np.float32)

    # Mediastinum, heart, aortic knob, spine: extra density in the middle.
    yy, xx = np.mgrid[0 : lo_shape[0], 0 : lo_shape[1]].astype(np.float32)
    bx = (xx / lo - frame.left) / frame.side
    by = (yy / lo - frame.top) / frame.side
    heart_c = (0.545 + rng.uniform(-0.015, 0.015), 0.58 + rng.uniform(-0.015, 0.015))
    heart_r = np.array([0.155, 0.13]) * rng.uniform(0.93, 1.07)
    heart = ((bx - heart_c[0]) / heart_r[0]) ** 2 + ((by - heart_c[1]) / heart_r[1]) ** 2
    # Below the diaphragm the heart merges with the equally dense abdomen: fade it out there.
    above = 1.0 / (1.0 + np.exp((by - 0.69) / 0.012))
    density += 0.12 * np.clip(1.0 - heart, 0, 1) ** 0.5 * above
    # Breasts and pectoral muscles thicken the soft tissue over the lower chest.
    density += 0.07 * np.clip((by - 0.3) / 0.4, 0, 1) * body
    knob = ((bx - 0.575) / 0.035) ** 2 + ((by - 0.25) / 0.03) ** 2
    density += 0.08 * np.clip(1.0 - knob, 0, 1) ** 0.5
    spine = np.clip(1.0 - np.abs(bx - 0.5) / 0.04, 0, 1) ** 0.3 * (by > 0.0)
    discs = 0.8 + 0.2 * np.cos(2 * np.pi * by / 0.042) ** 2  # vertebral bodies vs. discs
    density += 0.12 * spine * discs

    lung_lo = _fill(lo_shape, [frame.to_px(p, lo) for p in lungs.values()])
    lung_soft = lung_lo.astype(np.float32) / 255.0
    # Aerated lung removes tissue: most in the middle of each lung, least at its rim.
    dist_lung = cv2.distanceTransform((lung_lo > 127).astype(np.uint8), cv2.DIST_L2, 5)
    depth = 0.5 + 0.5 * np.sqrt(np.clip(dist_lung / (0.06 * s_lo), 0, 1))
    density -= 0.62 * lung_soft * depth
    density = cv2.GaussianBlur(density, (0, 0), 0.6)

    # Parenchyma at low res: baseline tissue plus faint blotchy texture, fading to the rim.
    texture = rng.standard_normal(lo_shape).astype(np.float32)
    texture = cv2.GaussianBlur(texture, (0, 0), 1.2) * 2.0
    fade = np.clip(dist_lung / (0.05 * s_lo), 0, 1).astype(np.float32)
    par_lo = lung_soft * (0.05 + 0.006 * texture)
    vessel_weight = lung_soft * (0.25 + 0.75 * fade)

    # Bones at mid resolution: clavicles, posterior and anterior ribs with brighter cortex.
    bones = _render_bones(rng, frame, mid_shape, mid, lungs)

    def up(a: F32) -> F32:
        return np.asarray(cv2.resize(a, (cols, rows), interpolation=cv2.INTER_LINEAR), np.float32)

    background = up(density)
    background += up(bones)
    lung_label = np.zeros((rows, cols), np.uint8)
    for label, name in ((1, "right"), (2, "left")):
        pts = np.round(frame.to_px(lungs[name]) * 16).astype(np.int32)
        cv2.fillPoly(lung_label, [pts], label, cv2.LINE_8, shift=4)
    lung = (lung_label > 0).astype(np.float32)

    lung_bin = lung_lo > 127

    def inside(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        px = np.round(frame.to_px(xy, lo)).astype(np.int64)
        ok = (px[:, 0] >= 0) & (px[:, 0] < lo_shape[1]) & (px[:, 1] >= 0) & (px[:, 1] < lo_shape[0])
        out = np.zeros(len(xy), bool)
        out[ok] = lung_bin[px[ok, 1], px[ok, 0]]
        return out

    vessels = _render_vessels(rng, frame, inside)
    parenchyma = (up(par_lo.astype(np.float32)) + vessels * up(vessel_weight)) * lung
    # Removing parenchyma where the lung-soft edge overlaps outside lung keeps the maps exact.
    landmarks = _landmarks(lungs)
    return Anatomy(frame, background, parenchyma.astype(np.float32), lung_label, landmarks)


def _landmarks(
    lungs: dict[str, npt.NDArray[np.float64]],
) -> dict[str, dict[str, tuple[float, float]]]:
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name, pts in lungs.items():
        apex = pts[np.argmin(pts[:, 1])]
        lateral_x = pts[:, 0].min() if name == "right" else pts[:, 0].max()
        lower = pts[pts[:, 1] > apex[1] + 0.5]
        cp = lower[np.argmin(lower[:, 0])] if name == "right" else lower[np.argmax(lower[:, 0])]
        upper_third = pts[np.abs(pts[:, 1] - 0.38) < 0.06]
        lat = (
            upper_third[np.argmin(upper_third[:, 0])]
            if name == "right"
            else upper_third[np.argmax(upper_third[:, 0])]
        )
        out[name] = {
            "apex": (float(apex[0]), float(apex[1])),
            "lateral": (float(lat[0]), float(lat[1])),
            "costophrenic": (float(cp[0]), float(cp[1])),
            "hilum": (0.40 if name == "right" else 0.60, 0.42),
            "lateral_x": (float(lateral_x), 0.0),
        }
    return out


def _render_vessels(
    rng: np.random.Generator,
    frame: Frame,
    inside: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.bool_]],
) -> F32:
    """Vessel density at native resolution, float32 ``(rows, columns)``, before lung masking."""
    # Three canvases (thick, medium, fine vessels) so crossings of different sizes add up;
    # within one canvas later strokes overwrite, which is invisible at these amplitudes.
    canvases = [np.zeros((frame.rows, frame.columns), np.uint8) for _ in range(3)]
    peak = 0.08  # density of the largest (hilar) vessel
    for hilum, sign in (((0.405, 0.43), -1.0), ((0.595, 0.43), 1.0)):
        segments, widths = _vessel_tree(rng, hilum, sign, inside)
        width_px = widths * frame.side
        thickness = np.maximum(1, np.round(width_px)).astype(np.int64)
        # Peak path length through a cylinder grows with its diameter; sub-pixel vessels are
        # drawn one pixel wide with proportionally less contrast. The square root keeps the
        # finest generations just visible above the quantum noise.
        amp = np.sqrt(widths / 0.009) * np.minimum(1.0, width_px)
        value = np.clip(np.round(255 * amp / amp.max() * 0.9 / 8) * 8, 8, 255).astype(np.int64)
        pts = np.round(frame.to_px(segments) * 16).astype(np.int32)
        group = np.where(thickness >= 6, 0, np.where(thickness >= 2, 1, 2))
        for key in np.unique(np.stack([thickness, value], 1), axis=0):
            sel = (thickness == key[0]) & (value == key[1])
            canvas = canvases[int(group[sel][0])]
            cv2.polylines(
                canvas, list(pts[sel]), False, int(key[1]), int(key[0]), cv2.LINE_AA, shift=4
            )
    out = canvases[0].astype(np.float32)
    out += canvases[1]
    out += canvases[2]
    out *= peak / 255.0
    return out


def _render_bones(
    rng: np.random.Generator,
    frame: Frame,
    shape: tuple[int, int],
    scale: float,
    lungs: dict[str, npt.NDArray[np.float64]],
) -> F32:
    """Bone density at mid resolution, float32 of ``shape``."""
    s = frame.side * scale
    posterior = np.zeros(shape, np.uint8)
    posterior_core = np.zeros(shape, np.uint8)
    anterior = np.zeros(shape, np.uint8)
    clav = np.zeros(shape, np.uint8)
    t = np.linspace(0.0, 1.0, 24)
    first = rng.uniform(0.075, 0.09)
    gap = rng.uniform(0.055, 0.062)
    for sign in (-1.0, 1.0):
        pts = lungs["right" if sign < 0 else "left"]
        wall_x = pts[:, 0].min() - 0.02 if sign < 0 else pts[:, 0].max() + 0.02
        for i in range(10):
            y0 = first + i * gap + rng.normal(0, 0.003)
            x_start = 0.5 + sign * 0.035
            # The upper ribs are short (they ring the apex); lower ones reach the wall.
            reach = min(1.0, 0.55 + 0.15 * i)
            lat = x_start + (wall_x - x_start) * reach
            x = x_start + (lat - x_start) * t
            # Posterior rib: level beside the spine, rising slightly, then sloping down
            # steeply towards the lateral wall.
            drop = 0.11 + 0.006 * i
            y = y0 - 0.015 * np.sin(np.pi * t * 0.8) + drop * t**2.6
            thick = 0.015 + 0.0009 * i
            rib = frame.to_px(np.stack([x, y], 1), scale)
            _stroke(posterior, rib, thick * s)
            _stroke(posterior_core, rib, (thick - 0.006) * s)
            if 1 <= i < 8:
                # Anterior rib: from the lateral wall, down and inwards towards the sternum
                # (the costal cartilage beyond is not radio-opaque).
                u = t[:18] / t[17]
                xa = lat + (0.5 + sign * (0.17 - 0.005 * i) - lat) * u
                ya = y[-1] + 0.015 + 0.13 * u**1.4 - 0.02 * np.sin(np.pi * u)
                _stroke(anterior, frame.to_px(np.stack([xa, ya], 1), scale), 0.019 * s)
        cx = np.array([0.47, 0.40, 0.30, 0.20, 0.12])
        cy = np.array([0.16, 0.15, 0.145, 0.135, 0.105]) + rng.uniform(-0.01, 0.01)
        cx = cx if sign < 0 else 1.0 - cx
        _stroke(clav, frame.to_px(np.stack([cx, cy], 1), scale), 0.024 * s)
    ring = posterior.astype(np.float32) - posterior_core
    bones = 0.035 * posterior + 0.03 * ring + 0.035 * anterior + 0.08 * clav.astype(np.float32)
    out = np.asarray(cv2.GaussianBlur(bones, (0, 0), 0.7), np.float32)
    out *= np.float32(1.0 / 255.0)
    return out


def _stroke(canvas: npt.NDArray[np.uint8], pts: npt.NDArray[np.float64], width: float) -> None:
    cv2.polylines(
        canvas,
        [np.round(pts * 16).astype(np.int32)],
        False,
        255,
        max(1, round(width)),
        cv2.LINE_AA,
        shift=4,
    )
