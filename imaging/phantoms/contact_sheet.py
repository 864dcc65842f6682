"""Contact sheet: phantoms at native resolution and downsampled to 1024, 256 and 64 px.

Each row is one phantom; columns show a crop around the pneumothorax (or the upper lung for
negatives) at native resolution with the mask outline, then the whole image antialiased down
(``cv2.INTER_AREA``) to 1024, 256 and 64 px, shown upsampled with nearest-neighbour so the
pixels stay visible. Run ``python -m imaging.phantoms.contact_sheet docs/contact_sheet.png``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from imaging.phantoms.dataset import Phantom, generate_phantom

logger = logging.getLogger(__name__)

RESOLUTIONS = (1024, 256, 64)


@dataclass(frozen=True)
class SheetRow:
    """One row: which phantom and its label."""

    label: str
    site: str
    index: int
    pneumothorax: bool
    size_fraction: float | None = None
    side: str | None = None


DEFAULT_ROWS = (
    SheetRow("positive, large", "a", 11, True, 0.95, "right"),
    SheetRow("positive, medium", "a", 12, True, 0.55, "left"),
    SheetRow("positive, tiny apical", "a", 13, True, 0.0, "right"),
    SheetRow("negative", "a", 14, False),
    SheetRow("negative", "a", 15, False),
    SheetRow("site b, positive", "b", 16, True, 0.7, "left"),
)


def _crop_box(ph: Phantom, crop: int) -> tuple[int, int]:
    """Top-left (row, col) of a ``crop`` square on the visceral pleural line (positives) or
    on the upper lateral right lung (negatives)."""
    rows, cols = ph.mask.shape
    if ph.mask.any():
        rr, cc = np.nonzero(ph.mask)
        r = int(np.median(rr))
        on_row = cc[rr == r]
        # The lung-side edge of the mask at its middle row is where the pleural line runs.
        c = int(on_row.max() if on_row.mean() < cols / 2 else on_row.min())
    else:
        rr, cc = np.nonzero(ph.lung[:, : cols // 2])
        r = int(np.percentile(rr, 30))
        c = int(cc[rr == r].min()) + crop // 4
    return (
        int(np.clip(r - crop // 2, 0, rows - crop)),
        int(np.clip(c - crop // 2, 0, cols - crop)),
    )


def _to_rgb(gray: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    g = (np.clip(gray, 0, 1) * 255).astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


def render_contact_sheet(
    out_path: str | Path,
    *,
    size: int = 2048,
    seed: int = 0,
    tile: int = 360,
    rows: tuple[SheetRow, ...] = DEFAULT_ROWS,
) -> Path:
    """Render the sheet to ``out_path`` (PNG) and return the path.

    ``tile``: displayed size of each cell in pixels; the native column is a ``tile``-pixel
    crop at 1:1, so the pleural line and vessels are shown unscaled.
    """
    label_h, label_w = 22, 150
    sheet = np.full(
        (label_h + tile * len(rows), label_w + tile * (1 + len(RESOLUTIONS)), 3), 255, np.uint8
    )
    crop = min(tile, size)
    for i, row in enumerate(rows):
        ph = generate_phantom(
            seed, row.index, row.site, size,
            pneumothorax=row.pneumothorax, size_fraction=row.size_fraction, side=row.side,
        )  # fmt: skip
        y = label_h + i * tile
        r0, c0 = _crop_box(ph, crop)
        native = _to_rgb(ph.pixels[r0 : r0 + crop, c0 : c0 + crop])
        contours, _ = cv2.findContours(
            ph.mask[r0 : r0 + crop, c0 : c0 + crop].astype(np.uint8),
            cv2.RETR_EXTERNAL,
            cv2.CHAIN_APPROX_NONE,
        )
        outlined = native.copy()
        cv2.drawContours(outlined, contours, -1, (255, 40, 40), 1)
        # Left half: plain pixels (the cue itself); right half: with the mask outline.
        half = crop // 2
        cell = np.concatenate([native[:, :half], outlined[:, half:]], axis=1)
        sheet[y : y + crop, label_w : label_w + crop] = cell
        for j, res in enumerate(RESOLUTIONS):
            small = cv2.resize(ph.pixels, (res, res), interpolation=cv2.INTER_AREA)
            shown = np.asarray(
                cv2.resize(small, (tile, tile), interpolation=cv2.INTER_NEAREST), np.float32
            )
            x = label_w + tile * (j + 1)
            sheet[y : y + tile, x : x + tile] = _to_rgb(shown)
            if ph.mask.any():
                m = cv2.resize(
                    ph.mask.astype(np.uint8), (tile, tile), interpolation=cv2.INTER_NEAREST
                )
                cs, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                # Only a marker tick on the downsampled columns: the outline would hide the cue.
                bx, by, bw, bh = cv2.boundingRect(np.concatenate(cs))
                cv2.rectangle(
                    sheet,
                    (x + bx - 3, y + by - 3),
                    (x + bx + bw + 3, y + by + bh + 3),
                    (255, 200, 0),
                    1,
                )
        meta = ph.metadata
        logger.info("row %d: %s area %.1f mm2", i, row.label, meta["area_mm2"])
    img = Image.fromarray(sheet)
    draw = ImageDraw.Draw(img)
    heads = [f"native {size}px (1:1 crop; right half: mask)"] + [
        f"{r} px (box: mask extent)" for r in RESOLUTIONS
    ]
    for j, head in enumerate(heads):
        draw.text((label_w + tile * j + 4, 5), head, fill=(0, 0, 0))
    for i, row in enumerate(rows):
        ph_label = f"{row.label}\nsite {row.site}"
        draw.text((6, label_h + i * tile + tile // 2 - 10), ph_label, fill=(0, 0, 0))
    for j in range(1, 1 + len(RESOLUTIONS)):
        draw.line(
            [(label_w + tile * j, 0), (label_w + tile * j, img.height)],
            fill=(255, 255, 255),
            width=2,
        )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m imaging.phantoms.contact_sheet OUT.png [--size 2048] [--seed 0]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile", type=int, default=360)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    render_contact_sheet(args.out, size=args.size, seed=args.seed, tile=args.tile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
