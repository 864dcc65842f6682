"""Synthetic chest X-ray phantoms with an exact pneumothorax mask, written as real DICOM.

Public API: ``generate_phantom`` (one image in memory), ``write_phantom_dataset`` (SIIM-ACR
layout on disk), ``SITES``/``site_profile`` (acquisition settings) and, for the
``sharpcxr phantoms`` command, ``add_phantoms_arguments`` / ``run_phantoms``.
See ``docs/phantoms.md``.
"""

from __future__ import annotations

import argparse
import logging

from imaging.dicom_writer import NOT_WRITABLE, TRANSFER_SYNTAX_ALIASES, resolve_transfer_syntax
from imaging.phantoms.acquisition import SITES, SiteProfile, site_profile
from imaging.phantoms.dataset import (
    Phantom,
    PhantomSetSpec,
    generate_phantom,
    write_phantom_dataset,
    write_phantom_sets,
)

__all__ = [
    "SITES",
    "Phantom",
    "PhantomSetSpec",
    "SiteProfile",
    "add_phantoms_arguments",
    "generate_phantom",
    "run_phantoms",
    "site_profile",
    "write_phantom_dataset",
    "write_phantom_sets",
]

logger = logging.getLogger(__name__)


def add_phantoms_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sharpcxr phantoms OUT ...`` arguments to ``parser``."""
    parser.add_argument("out", metavar="OUT", help="output folder (created if missing)")
    parser.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    parser.add_argument("--site", choices=sorted(SITES), default="a", help="acquisition site")
    parser.add_argument("--size", type=int, default=2048, help="square native size in pixels")
    parser.add_argument("--rows", type=int, default=None, help="rows (overrides --size)")
    parser.add_argument("--columns", type=int, default=None, help="columns (overrides --size)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument(
        "--positive-fraction",
        type=float,
        default=0.5,
        help="fraction of images with a pneumothorax (default 0.5)",
    )
    parser.add_argument(
        "--transfer-syntax",
        default="explicit-le",
        help="transfer syntax UID or one of: " + ", ".join(sorted(TRANSFER_SYNTAX_ALIASES)),
    )
    parser.add_argument("--bits-stored", type=int, default=12, help="BitsStored, 8..16")
    parser.add_argument(
        "--modality", choices=["CR", "DX"], default=None, help="default: the site's"
    )
    parser.add_argument(
        "--photometric",
        choices=["MONOCHROME1", "MONOCHROME2"],
        default=None,
        help="default: the site's (a: MONOCHROME2, b: MONOCHROME1)",
    )


def run_phantoms(args: argparse.Namespace) -> int:
    """Run ``sharpcxr phantoms``; returns the exit status (0 ok, 2 bad arguments)."""
    try:
        ts = resolve_transfer_syntax(args.transfer_syntax)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    if ts in NOT_WRITABLE:
        logger.error("cannot write %s: %s", ts.name, NOT_WRITABLE[ts])
        return 2
    if args.n < 0 or not 0.0 <= args.positive_fraction <= 1.0:
        logger.error("--n must be >= 0 and --positive-fraction in [0, 1]")
        return 2
    if not 8 <= args.bits_stored <= 16:
        logger.error("--bits-stored must be 8..16")
        return 2
    try:
        csv_path = write_phantom_dataset(
            args.out,
            args.n,
            site=args.site,
            size=args.size,
            seed=args.seed,
            positive_fraction=args.positive_fraction,
            transfer_syntax=ts,
            bits_stored=args.bits_stored,
            modality=args.modality,
            rows=args.rows,
            columns=args.columns,
            photometric=args.photometric,
        )
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    logger.info("wrote %d phantoms, labels in %s", args.n, csv_path)
    return 0
