"""One phantom in memory (``generate_phantom``) and a SIIM-ACR-style dataset on disk.

Layout written by ``write_phantom_dataset(out_dir, ...)``::

    out_dir/dicom/<SOPInstanceUID>.dcm   one DICOM Part 10 file per image (flat)
    out_dir/train-rle.csv                ImageId,EncodedPixels (SIIM relative column-major
                                         RLE in the DICOM's rows x columns grid; -1 = none)
    out_dir/phantoms.json                parameters, site profile, per-image metadata

Determinism: image ``i`` of ``seed`` uses generators seeded from ``(seed, site, i)`` only, so
it is byte-identical whatever ``n`` is, and whether it is generated alone or in a dataset.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from imaging.dicom_writer import resolve_transfer_syntax, write_dicom
from imaging.phantoms.acquisition import (
    SiteProfile,
    add_quantum_noise,
    burn_marker,
    collimate,
    contrast_curve,
    pixel_spacing_mm,
    quantise,
    rotate,
    site_profile,
)
from imaging.phantoms.anatomy import Frame, render_anatomy
from imaging.phantoms.pneumothorax import (
    PneumothoraxSpec,
    pneumothorax_mask,
    render_with_pneumothorax,
)
from imaging.rle import encode_siim_rle

logger = logging.getLogger(__name__)

GOLDEN = 0.6180339887498949
_SITE_CODES = {"a": 1, "b": 2}


@dataclass
class Phantom:
    """One synthetic radiograph.

    ``pixels``: float32 ``(rows, columns)`` display values in [0, 1], higher = denser
    (bone/soft tissue bright, lung dark), before quantisation and photometric inversion.
    ``mask``: bool ``(rows, columns)`` pneumothorax space (all False for negatives).
    ``lung``: bool ``(rows, columns)`` lung fields, aligned with ``pixels`` (after rotation).
    ``metadata``: JSON-serialisable facts (site, spacing, size in mm^2, side, ...).
    """

    pixels: npt.NDArray[np.float32]
    mask: npt.NDArray[np.bool_]
    lung: npt.NDArray[np.bool_]
    metadata: dict[str, Any]


def _generators(
    rng_or_seed: int | np.random.Generator, index: int, site: str
) -> tuple[list[np.random.Generator], float]:
    """Three independent generators (decisions, anatomy, acquisition) and a [0, 1) draw
    deciding positive vs negative.

    For an integer seed the draw is a golden-ratio (low-discrepancy) sequence over the index
    with a seed-dependent start, so any run of images holds close to the requested fraction.
    """
    if isinstance(rng_or_seed, np.random.Generator):
        children = rng_or_seed.spawn(3)
        return children, float(children[0].random())
    seed = int(rng_or_seed)
    code = _SITE_CODES.get(site, sum(map(ord, site)))
    seq = np.random.SeedSequence([seed, code, index])
    children = [np.random.Generator(np.random.PCG64(s)) for s in seq.spawn(3)]
    start = np.random.default_rng([seed, code]).random()
    return children, float((start + index * GOLDEN) % 1.0)


def generate_phantom(
    rng_or_seed: int | np.random.Generator = 0,
    index: int = 0,
    site: str | SiteProfile = "a",
    rows: int = 2048,
    columns: int | None = None,
    *,
    pneumothorax: bool | None = None,
    size_fraction: float | None = None,
    side: str | None = None,
    positive_fraction: float = 0.5,
) -> Phantom:
    """Generate one phantom without touching the disk.

    ``rows`` x ``columns`` (``columns`` defaults to ``rows``): native size. ``pneumothorax``:
    force positive/negative (None: drawn so that ``positive_fraction`` of indices are
    positive). ``size_fraction``: pneumothorax size 0 (tiny apical) .. 1 (large); None draws
    it uniformly (log-uniform in physical extent). ``side``: ``right``/``left`` or None.
    The anatomy of ``(seed, index)`` is the same whatever the pneumothorax arguments are.
    """
    profile = site if isinstance(site, SiteProfile) else site_profile(site)
    columns = rows if columns is None else columns
    if rows < 32 or columns < 32:
        raise ValueError(f"phantoms need at least 32x32 pixels, got {rows}x{columns}")
    (g_decide, g_anat, g_acq), u = _generators(rng_or_seed, index, profile.name)
    # Always draw the same numbers so overrides do not shift anything else.
    drawn_side = "right" if g_decide.random() < 0.5 else "left"
    drawn_size = float(g_decide.random())
    line_px = float(g_decide.uniform(1.0, 3.0))
    positive = (u < positive_fraction) if pneumothorax is None else bool(pneumothorax)
    ptx_side = side or drawn_side
    if ptx_side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    size = drawn_size if size_fraction is None else float(size_fraction)

    frame = Frame.for_image(rows, columns)
    anatomy = render_anatomy(g_anat, frame)
    spec = None
    mask = np.zeros((rows, columns), bool)
    if positive:
        # The pleural line is 1-3 px at 2048 and keeps its physical width at other sizes.
        spec = PneumothoraxSpec(ptx_side, size, pleural_line_px=line_px * frame.side / 2048)  # type: ignore[arg-type]
        mask = pneumothorax_mask(anatomy, spec)
    density = render_with_pneumothorax(anatomy, mask if positive else None, spec)
    lung = anatomy.lung_label > 0
    del anatomy

    angle = 0.0
    if profile.max_rotation_deg > 0:
        angle = float(g_acq.uniform(-profile.max_rotation_deg, profile.max_rotation_deg))
        density, (mask, lung) = rotate(density, [mask, lung], angle)
    spacing = pixel_spacing_mm(frame, profile)
    density = add_quantum_noise(density, g_acq, profile.photons_per_mm2 * spacing**2)
    display = contrast_curve(density, profile)
    display = collimate(display, profile, g_acq)
    if profile.marker:
        display = burn_marker(display, profile.marker, frame)

    area_px = int(mask.sum())
    metadata: dict[str, Any] = {
        "index": index,
        "site": profile.name,
        "rows": rows,
        "columns": columns,
        "pixel_spacing_mm": round(spacing, 6),
        "photometric": profile.photometric,
        "rotation_deg": round(angle, 4),
        "pneumothorax": positive,
        "side": ptx_side if positive else None,
        "size_fraction": round(size, 6) if positive else None,
        "area_px": area_px,
        "area_mm2": round(area_px * spacing**2, 3),
    }
    if positive:
        rr, cc = np.nonzero(mask)
        metadata["bbox_rc"] = [int(rr.min()), int(cc.min()), int(rr.max()), int(cc.max())]
        metadata["width_px"] = int(cc.max() - cc.min() + 1)
    return Phantom(display, mask, lung, metadata)


def encode_phantom(
    ph: Phantom,
    profile: SiteProfile,
    *,
    transfer_syntax: str = "explicit-le",
    bits_stored: int = 12,
    uid_entropy: tuple[object, ...] | None = None,
    patient_name: str = "PHANTOM^SYNTHETIC",
    patient_id: str = "SHARPCXR-PHANTOM",
) -> tuple[bytes, Dataset]:
    """One phantom as DICOM Part 10 bytes, the way its site stores it: quantised to
    ``bits_stored`` in the site's photometric interpretation, its pixel spacing, the site's
    default window and rescale; returns ``(bytes, dataset)``. Every phantom written to disk
    goes through here, so a phantom encoded alone (in a test, say) is stored exactly as its
    training set was. ``uid_entropy`` makes the UIDs deterministic (default: from the
    phantom's site, index and size)."""
    ts = resolve_transfer_syntax(transfer_syntax)
    top = (1 << bits_stored) - 1
    stored = quantise(ph.pixels, bits_stored, profile.photometric)
    spacing = float(ph.metadata["pixel_spacing_mm"])
    # Default window spans the central part of the stored range (values are already
    # display-ready; a viewer without VOI handling still sees the whole image).
    window = (top / 2.0, top * 0.9) if profile.window else None
    buffer = io.BytesIO()
    ds = write_dicom(
        buffer,
        stored,
        transfer_syntax=ts,
        bits_stored=bits_stored,
        photometric=profile.photometric,
        modality=profile.modality,
        pixel_spacing_mm=(spacing, spacing),
        window=window,
        rescale=(1.0, 0.0) if profile.rescale else None,
        uid_entropy=uid_entropy
        or ("sharpcxr-phantom", profile.name, ph.metadata["index"], *stored.shape, bits_stored),
        patient_name=patient_name,
        patient_id=patient_id,
        institution=f"SHARPCXR SYNTHETIC SITE {profile.name.upper()}",
    )
    return buffer.getvalue(), ds


def write_phantom_dataset(
    out_dir: str | Path,
    n: int,
    site: str = "a",
    size: int = 2048,
    seed: int = 0,
    positive_fraction: float = 0.5,
    transfer_syntax: str = "explicit-le",
    bits_stored: int = 12,
    modality: str | None = None,
    *,
    rows: int | None = None,
    columns: int | None = None,
    photometric: str | None = None,
    profile_overrides: dict[str, Any] | None = None,
) -> Path:
    """Write ``n`` phantoms of ``site`` in the SIIM-ACR layout (module docstring); returns the
    CSV path. ``rows``/``columns`` override ``size``; ``modality``/``photometric`` override
    the site's; ``profile_overrides`` replaces any other :class:`SiteProfile` field (e.g. one
    factor of another site, for a distribution-shift ablation). JPEG Baseline stores 8 bits
    whatever ``bits_stored`` says (logged)."""
    out = Path(out_dir)
    (out / "dicom").mkdir(parents=True, exist_ok=True)
    ts = resolve_transfer_syntax(transfer_syntax)
    if ts.name.startswith("JPEG Baseline") and bits_stored != 8:
        logger.warning("JPEG Baseline holds 8-bit samples: writing BitsStored 8")
        bits_stored = 8
    overrides: dict[str, Any] = dict(profile_overrides or {})
    if modality:
        overrides["modality"] = modality.upper()
    if photometric:
        overrides["photometric"] = photometric.upper()
    profile = site_profile(site, **overrides)
    rows = rows or size
    columns = columns or size

    records: list[dict[str, Any]] = []
    csv_rows: list[tuple[str, str]] = []
    for index in range(n):
        ph = generate_phantom(
            seed, index, profile, rows, columns, positive_fraction=positive_fraction
        )
        data, ds = encode_phantom(
            ph,
            profile,
            transfer_syntax=ts,
            bits_stored=bits_stored,
            uid_entropy=(
                "sharpcxr-phantom",
                seed,
                profile.name,
                index,
                rows,
                columns,
                bits_stored,
                profile.modality,
            ),
            patient_name=f"PHANTOM^SITE{profile.name.upper()}^{index:06d}",
            patient_id=f"SHARPCXR-{profile.name.upper()}-{seed}-{index:06d}",
        )
        uid = str(ds.SOPInstanceUID)
        (out / "dicom" / f"{uid}.dcm").write_bytes(data)
        csv_rows.append((uid, encode_siim_rle(ph.mask)))
        records.append({"image_id": uid, "file": f"dicom/{uid}.dcm", **ph.metadata})
        logger.info("phantom %d/%d %s positive=%s", index + 1, n, uid, ph.metadata["pneumothorax"])

    csv_path = out / "train-rle.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ImageId", "EncodedPixels"])
        # SIIM's file has a space before each RLE; loaders strip it, so we keep it plain.
        writer.writerows(csv_rows)
    manifest = {
        "generator": "sharpcxr imaging.phantoms",
        "format_version": 1,
        "synthetic": True,
        "parameters": {
            "n": n,
            "site": profile.name,
            "rows": rows,
            "columns": columns,
            "seed": seed,
            "positive_fraction": positive_fraction,
            "transfer_syntax": str(ts),
            "transfer_syntax_name": ts.name,
            "bits_stored": bits_stored,
        },
        "site_profile": dataclasses.asdict(profile),
        "images": records,
    }
    (out / "phantoms.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return csv_path


@dataclass(frozen=True)
class PhantomSetSpec:
    """One dataset for :func:`write_phantom_sets`: ``write_phantom_dataset(root, n, site,
    size, seed, profile_overrides=overrides)``."""

    root: Path
    site: str
    n: int
    seed: int
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


def write_phantom_sets(specs: list[PhantomSetSpec], size: int, workers: int = 2) -> None:
    """Write every set of ``specs`` that is not already on disk (its ``train-rle.csv``,
    written last, marks it complete), ``workers`` sets at a time in separate processes."""
    from concurrent.futures import ProcessPoolExecutor

    todo = [s for s in specs if not (Path(s.root) / "train-rle.csv").exists()]
    if not todo:
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(write_phantom_dataset, s.root, s.n, site=s.site, size=size,
                               seed=s.seed, profile_overrides=s.overrides or None)
                   for s in todo]  # fmt: skip
        for future in futures:
            future.result()
