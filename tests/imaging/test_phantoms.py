"""Synthetic phantoms: determinism, masks, sites, the SIIM-style dataset and the CLI."""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from imaging.dicom_writer import WRITABLE_TRANSFER_SYNTAXES
from imaging.phantoms import (
    add_phantoms_arguments,
    generate_phantom,
    run_phantoms,
    write_phantom_dataset,
)
from imaging.rle import decode_siim_rle


def test_deterministic_and_independent_of_n(tmp_path: Path) -> None:
    a = generate_phantom(7, 3, "a", 256)
    b = generate_phantom(7, 3, "a", 256)
    c = generate_phantom(7, 4, "a", 256)
    assert a.pixels.tobytes() == b.pixels.tobytes()
    assert np.array_equal(a.mask, b.mask) and a.metadata == b.metadata
    assert a.pixels.tobytes() != c.pixels.tobytes()
    # Image i of a dataset does not depend on how many images were written.
    write_phantom_dataset(tmp_path / "n2", 2, size=128, seed=5)
    write_phantom_dataset(tmp_path / "n3", 3, size=128, seed=5)
    f2 = sorted((tmp_path / "n2" / "dicom").iterdir())
    f3 = {p.name: p for p in (tmp_path / "n3" / "dicom").iterdir()}
    for p in f2:
        assert p.read_bytes() == f3[p.name].read_bytes()


def test_anatomy_independent_of_pneumothorax_choice() -> None:
    neg = generate_phantom(1, 0, "a", 256, pneumothorax=False)
    pos = generate_phantom(1, 0, "a", 256, pneumothorax=True, size_fraction=0.8)
    band = cv2.dilate(pos.mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert np.array_equal(neg.lung, pos.lung)
    assert not neg.mask.any() and pos.mask.any()
    # Darker inside the pneumothorax (no lung tissue), same elsewhere apart from the line.
    assert pos.pixels[pos.mask].mean() < neg.pixels[pos.mask].mean()
    np.testing.assert_array_equal(pos.pixels[~band], neg.pixels[~band])


@pytest.mark.parametrize("site", ["a", "b"])
def test_mask_inside_lung_and_only_for_positives(site: str) -> None:
    for index in range(8):
        ph = generate_phantom(3, index, site, 256, positive_fraction=0.5)
        assert ph.mask.any() == ph.metadata["pneumothorax"]
        assert ph.pixels.dtype == np.float32 and ph.pixels.shape == (256, 256)
        assert ph.pixels.min() >= 0.0 and ph.pixels.max() <= 1.0
        if ph.mask.any():
            assert (ph.mask & ~ph.lung).sum() == 0
            side_cols = np.nonzero(ph.mask)[1]
            on_left_of_image = side_cols.mean() < 128
            assert on_left_of_image == (ph.metadata["side"] == "right")


def test_positive_fraction_is_respected() -> None:
    flags = [generate_phantom(11, i, "a", 64).metadata["pneumothorax"] for i in range(20)]
    assert 8 <= sum(flags) <= 12
    assert not any(
        generate_phantom(11, i, "a", 64, positive_fraction=0).mask.any() for i in range(5)
    )


def test_sizes_span_tiny_to_large() -> None:
    areas = []
    for size in (0.0, 0.3, 0.6, 1.0):
        ph = generate_phantom(2, 0, "a", 1024, pneumothorax=True, size_fraction=size, side="left")
        areas.append(ph.metadata["area_px"])
        if size == 0.0:
            # Tiny: narrower than one pixel of a 64 px model input.
            assert 0 < ph.metadata["width_px"] < 1024 / 64
        if size == 1.0:
            lung_left = ph.lung[:, 512:].sum()
            assert ph.metadata["area_px"] > 0.25 * lung_left
    assert areas == sorted(areas) and areas[-1] > 1000 * areas[0]


def test_non_square_and_timing_2048() -> None:
    ph = generate_phantom(0, 1, "a", rows=250, columns=300, pneumothorax=True)
    assert ph.pixels.shape == ph.mask.shape == (250, 300)
    generate_phantom(0, 0, "a", 512)  # warm up imports and caches
    start = time.perf_counter()
    big = generate_phantom(0, 0, "b", 2048, pneumothorax=True, size_fraction=0.5)
    elapsed = time.perf_counter() - start
    assert big.pixels.shape == (2048, 2048)
    assert elapsed < 3.0  # ~0.3 s here; generous for loaded CI machines


def test_site_b_differs() -> None:
    a = generate_phantom(4, 0, "a", 256, pneumothorax=False)
    b = generate_phantom(4, 0, "b", 256, pneumothorax=False)
    assert a.metadata["photometric"] == "MONOCHROME2" and b.metadata["photometric"] == "MONOCHROME1"
    assert a.metadata["pixel_spacing_mm"] != b.metadata["pixel_spacing_mm"]
    assert a.metadata["rotation_deg"] == 0.0 and b.metadata["rotation_deg"] != 0.0
    # Contrast: the lungs sit at a different grey level relative to the mediastinum.
    lung_a, lung_b = a.pixels[a.lung].mean(), b.pixels[b.lung].mean()
    assert abs(lung_a - lung_b) > 0.05
    # Collimation: site b's corners are bright (unexposed), site a's dark (air).
    assert b.pixels[0, 0] > 0.9 and a.pixels[0, 0] < 0.1


def test_dataset_csv_dicom_and_manifest(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    csv_path = write_phantom_dataset(out, 4, site="b", size=192, seed=1, bits_stored=10)
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert next(r.keys() for r in rows) == {"ImageId", "EncodedPixels"}
    manifest = json.loads((out / "phantoms.json").read_text())
    by_id = {rec["image_id"]: rec for rec in manifest["images"]}
    assert len(rows) == 4 and {r["ImageId"] for r in rows} == set(by_id)
    for r in rows:
        ds = pydicom.dcmread(out / "dicom" / f"{r['ImageId']}.dcm")
        assert ds.SOPInstanceUID == r["ImageId"]
        assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.Modality == "CR"
        assert ds.BitsStored == 10 and int(ds.pixel_array.max()) < 2**10
        assert str(ds.PatientName).startswith("PHANTOM^") and ds.PatientID.startswith("SHARPCXR-")
        mask = decode_siim_rle(r["EncodedPixels"], int(ds.Rows), int(ds.Columns))
        rec = by_id[r["ImageId"]]
        assert (r["EncodedPixels"] == "-1") == (not rec["pneumothorax"])
        assert int(mask.sum()) == rec["area_px"]
        ph = generate_phantom(1, rec["index"], "b", 192)
        assert np.array_equal(mask, ph.mask)
        # MONOCHROME1: stored values are inverted display values.
        expected = 1023 - np.rint(np.clip(ph.pixels, 0, 1) * 1023).astype(np.uint16)
        assert np.array_equal(ds.pixel_array, expected)


@pytest.mark.parametrize("uid", WRITABLE_TRANSFER_SYNTAXES[:8], ids=lambda u: u.name)
def test_dataset_transfer_syntaxes(uid: str, tmp_path: Path) -> None:
    write_phantom_dataset(tmp_path, 1, size=128, seed=2, transfer_syntax=uid, positive_fraction=1)
    (path,) = (tmp_path / "dicom").iterdir()
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == uid
    assert ds.pixel_array.shape == (128, 128)


def test_cli(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_phantoms_arguments(parser)
    args = parser.parse_args(
        [str(tmp_path), "--n", "2", "--site", "a", "--rows", "160", "--columns", "128",
         "--seed", "3", "--transfer-syntax", "jpeg-ls", "--bits-stored", "12", "--modality", "CR"]
    )  # fmt: skip
    assert run_phantoms(args) == 0
    files = list((tmp_path / "dicom").glob("*.dcm"))
    assert len(files) == 2
    ds = pydicom.dcmread(files[0])
    assert (ds.Rows, ds.Columns) == (160, 128) and ds.Modality == "CR"
    bad = parser.parse_args([str(tmp_path / "x"), "--transfer-syntax", "htj2k"])
    assert run_phantoms(bad) == 2
