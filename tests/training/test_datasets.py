"""Training-format smoke tests: each dataset format written in the test, loaded, iterated.

Writers here produce small files in the published formats (SIIM-ACR, NIH ChestX-ray14,
CheXpert) and are reused by the other ``test_datasets_*`` modules.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from imaging.dicom_writer import write_dicom
from imaging.geometry import LetterboxGeometry
from imaging.phantoms import write_phantom_dataset
from imaging.rle import decode_siim_rle, encode_siim_rle
from training.datasets import (
    CHEXPERT_LABELS,
    NIH_LABELS,
    CXRDataset,
    PreprocessCache,
    load_chexpert,
    load_nih,
    load_phantoms,
    load_siim,
)
from training.datasets.chexpert import RANDOM_UNCERTAIN_RANGE

R = 64


# ------------------------------------------------------------------------ writers
def rect_mask(rows: int, cols: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((rows, cols), bool)
    m[r0:r1, c0:c1] = True
    return m


def write_siim(root: Path, rows: int = 100, cols: int = 80) -> dict[str, Any]:
    """Four DICOMs (nested as in the real release, one under dicom/), a broken one, and a
    train-rle.csv with the real leading-space header, two rows for one image, a -1 row and
    a row for an image without a file."""
    rng = np.random.default_rng(0)
    ids = [f"1.2.826.0.1.{i}" for i in range(4)]
    patients = ["PAT-A", "PAT-A", "PAT-B", "PAT-C"]
    for i, (image_id, pid) in enumerate(zip(ids, patients, strict=True)):
        folder = root / "dicom" if i == 3 else root / "dicom-images-train" / f"st{i}" / f"se{i}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 4096, (rows, cols)).astype(np.uint16)
        write_dicom(folder / f"{image_id}.dcm", pixels, patient_id=pid)
    (root / "dicom" / "1.2.826.0.1.9.dcm").write_bytes(b"not a dicom file at all" * 10)
    m1 = rect_mask(rows, cols, 10, 30, 5, 20)
    m2 = rect_mask(rows, cols, 50, 70, 40, 60)
    m3 = rect_mask(rows, cols, 0, 100, 0, 8)
    with (root / "train-rle.csv").open("w", newline="") as fh:
        fh.write("ImageId, EncodedPixels\n")
        fh.write(f"{ids[0]}, {encode_siim_rle(m1)}\n")
        fh.write(f"{ids[1]}, -1\n")
        fh.write(f"{ids[0]}, {encode_siim_rle(m2)}\n")
        fh.write(f"{ids[2]}, {encode_siim_rle(m3)}\n")
        fh.write(f"{ids[3]}, -1\n")
        fh.write("1.2.826.0.1.404, -1\n")  # no file
        fh.write("1.2.826.0.1.9, -1\n")  # file the imaging path refuses
    return {"ids": ids, "union": m1 | m2, "m1": m1, "m2": m2, "m3": m3, "shape": (rows, cols)}


def write_nih(root: Path, size: int = 128) -> dict[str, Any]:
    """Five PNGs (8-bit gray, 16-bit, RGBA) + Data_Entry_2017.csv + BBox_List_2017.csv."""
    folder = root / "images_001" / "images"
    folder.mkdir(parents=True)
    names = [f"0000000{p}_00{k}.png" for p, k in [(1, 0), (1, 1), (2, 0), (3, 0), (4, 0)]]
    rng = np.random.default_rng(1)
    for i, name in enumerate(names):
        gray = rng.integers(0, 256, (size, size)).astype(np.uint8)
        if i == 1:
            image: np.ndarray = gray.astype(np.uint16) * 257
        elif i == 2:
            image = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
        else:
            image = gray
        assert cv2.imwrite(str(folder / name), image)
    findings = ["Pneumothorax|Effusion", "No Finding", "Nodule", "Pneumothorax", "Hernia|Mass"]
    with (root / "Data_Entry_2017.csv").open("w", newline="") as fh:
        fh.write(
            "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
            "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
        )
        for name, f in zip(names, findings, strict=True):
            fh.write(f"{name},{f},0,{int(name[:8])},58,M,PA,2682,2749,0.143,0.143,\n")
        fh.write("00009999_000.png,Nodule,0,9999,40,F,PA,2048,2500,0.168,0.168,\n")  # no file
    with (root / "BBox_List_2017.csv").open("w", newline="") as fh:
        fh.write("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
        fh.write(f"{names[0]},Pneumothorax,32.0,64.0,32.0,16.0,,,\n")
        fh.write(f"{names[0]},Effusion,0.0,0.0,8.0,8.0,,,\n")
        fh.write(f"{names[2]},Nodule,100.5,20.25,3.0,3.0,,,\n")
    return {"names": names}


CHEXPERT_ROWS: list[tuple[str, str, float | str]] = [
    # (patient/study/view, Frontal/Lateral, Pneumothorax value)
    ("patient00001/study1/view1_frontal", "Frontal", -1.0),
    ("patient00001/study1/view2_lateral", "Lateral", 1.0),
    ("patient00002/study1/view1_frontal", "Frontal", 1.0),
    ("patient00003/study1/view1_frontal", "Frontal", ""),
    ("patient00004/study2/view1_frontal", "Frontal", 0.0),
    ("patient00005/study1/view1_frontal", "Frontal", -1.0),
]


def write_chexpert(root: Path) -> Path:
    """JPEGs under root/CheXpert-v1.0-small/train/... and the CSV with the real columns."""
    base = root / "CheXpert-v1.0-small"
    rng = np.random.default_rng(2)
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]
    csv_path = base / "train.csv"
    base.mkdir(parents=True)
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for rel, view, ptx in CHEXPERT_ROWS:
            path = base / "train" / f"{rel}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), rng.integers(0, 256, (96, 80)).astype(np.uint8))
            values: list[Any] = [""] * len(CHEXPERT_LABELS)
            values[CHEXPERT_LABELS.index("Pneumothorax")] = ptx
            values[CHEXPERT_LABELS.index("Edema")] = -1.0
            values[CHEXPERT_LABELS.index("Support Devices")] = 1.0
            ap = "" if view == "Lateral" else "PA"
            writer.writerow([f"CheXpert-v1.0-small/train/{rel}.jpg", "Female", 68, view, ap,
                             *values])  # fmt: skip
    return csv_path


def iterate(dataset: CXRDataset, workers: int = 0, batch: int = 2) -> list[dict[str, Any]]:
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=False)
    return list(loader)


def check_batches(batches: list[dict[str, Any]], n: int, labels: int, masks: bool = False) -> None:
    seen = 0
    for b in batches:
        k = b["image"].shape[0]
        assert b["image"].shape == (k, 1, R, R) and b["image"].dtype == torch.float32
        assert b["label"].shape == (k, labels) and b["label"].dtype == torch.float32
        assert float(b["image"].min()) >= -2.0 - 1e-3 and float(b["image"].max()) <= 2.0 + 1e-3
        if masks:
            assert b["mask"].shape == (k, R, R) and b["mask"].dtype == torch.bool
        seen += k
    assert seen == n


# ------------------------------------------------------------------------ SIIM
def test_siim_records_labels_masks_and_loader(tmp_path: Path, caplog: Any) -> None:
    facts = write_siim(tmp_path)
    with caplog.at_level(logging.WARNING):
        records = load_siim(tmp_path)
    ids = facts["ids"]
    assert [r.image_id for r in records] == [*ids, "1.2.826.0.1.9"]
    by_id = {r.image_id: r for r in records}
    assert by_id[ids[0]].labels.tolist() == [1.0] and len(by_id[ids[0]].mask_rle) == 2
    assert by_id[ids[1]].labels.tolist() == [0.0] and by_id[ids[1]].mask_rle == ()
    assert by_id[ids[3]].path.parent.name == "dicom"
    assert by_id[ids[0]].patient_id == by_id[ids[1]].patient_id == "PAT-A"
    assert "PAT-" not in caplog.text  # patient ids never logged
    assert "1 CSV images without a DICOM" in caplog.text

    cache = PreprocessCache()
    ds = CXRDataset(records, R, with_masks=True, cache=cache)
    with caplog.at_level(logging.WARNING):
        batches = iterate(ds)
    check_batches(batches, len(records), 1, masks=True)
    # The broken DICOM is refused, logged by image id only, counted, replaced by the next.
    assert ds.refused == {"1.2.826.0.1.9"} and "1.2.826.0.1.9" in caplog.text
    assert batches[-1]["index"].tolist()[-1] == 0

    geometry = LetterboxGeometry.fit(*facts["shape"], R)
    expected = geometry.mask_to_model(facts["union"])
    mask = ds[0]["mask"].numpy()
    assert np.array_equal(mask, expected)
    for part in ("m1", "m2"):  # the union holds both regions, each alone holds less
        alone = geometry.mask_to_model(facts[part])
        assert (mask & alone).sum() == alone.sum() and alone.sum() < mask.sum()
    assert not ds[1]["mask"].any()


def test_siim_loader_with_workers(tmp_path: Path) -> None:
    write_siim(tmp_path)
    records = [r for r in load_siim(tmp_path) if r.image_id != "1.2.826.0.1.9"]
    ds = CXRDataset(records, R, with_masks=True, cache=PreprocessCache(tmp_path / "cache"))
    batches = iterate(ds, workers=2)
    check_batches(batches, len(records), 1, masks=True)
    assert len(list((tmp_path / "cache").glob("*/*.npy"))) == len(records)
    again = iterate(CXRDataset(records, R, cache=PreprocessCache(tmp_path / "cache")))
    assert torch.equal(torch.cat([b["image"] for b in again]),
                       torch.cat([b["image"] for b in batches]))  # fmt: skip


def test_rle_rows_decode_in_the_dicom_grid(tmp_path: Path) -> None:
    facts = write_siim(tmp_path)
    record = next(r for r in load_siim(tmp_path) if r.image_id == facts["ids"][2])
    assert np.array_equal(decode_siim_rle(record.mask_rle[0], *facts["shape"]), facts["m3"])


# ------------------------------------------------------------------------ phantoms
def test_phantoms_load_with_site_and_masks(tmp_path: Path) -> None:
    write_phantom_dataset(tmp_path / "ph", 6, site="b", size=128, seed=3)
    records = load_phantoms(tmp_path / "ph")
    assert len(records) == 6 and {r.site for r in records} == {"b"}
    assert len({r.patient_id for r in records}) == 6
    positives = [r for r in records if r.labels[0] == 1]
    assert positives and all(r.mask_rle for r in positives)
    ds = CXRDataset(records, R, with_masks=True, cache=PreprocessCache(tmp_path / "c"))
    batches = iterate(ds, batch=3)
    check_batches(batches, 6, 1, masks=True)
    for b in batches:
        has_mask = b["mask"].flatten(1).any(1)
        assert torch.equal(has_mask, b["label"][:, 0] == 1)
    check_batches(iterate(ds, workers=2, batch=3), 6, 1, masks=True)


# ------------------------------------------------------------------------ NIH
def test_nih_multilabel_boxes_and_loader(tmp_path: Path) -> None:
    names = write_nih(tmp_path)["names"]
    records = load_nih(tmp_path, labels="all")
    assert [r.image_id for r in records] == names  # the row without a PNG is skipped
    labels = {r.image_id: r.labels for r in records}
    on = {n: {NIH_LABELS[i] for i in np.flatnonzero(v)} for n, v in labels.items()}
    assert on == {names[0]: {"Pneumothorax", "Effusion"}, names[1]: set(), names[2]: {"Nodule"},
                  names[3]: {"Pneumothorax"}, names[4]: {"Hernia", "Mass"}}  # fmt: skip
    assert records[0].patient_id == records[1].patient_id == "1"
    assert records[0].boxes == ((64.0, 32.0, 80.0, 64.0), (0.0, 0.0, 8.0, 8.0))

    ptx = load_nih(tmp_path)
    assert [r.labels.tolist() for r in ptx] == [[1.0], [0.0], [0.0], [1.0], [0.0]]
    assert ptx[0].boxes == ((64.0, 32.0, 80.0, 64.0),)  # only the selected label's boxes
    assert ptx[2].boxes == ()

    ds = CXRDataset(records, R, with_masks=True, cache=PreprocessCache(tmp_path / "c"))
    check_batches(iterate(ds, batch=2), 5, 14, masks=True)
    check_batches(iterate(ds, workers=2, batch=2), 5, 14, masks=True)
    # 128 px -> 64: the (y 64..80, x 32..64) box covers model rows 32..40, columns 16..32.
    mask = ds[0]["mask"].numpy()
    expected = np.zeros((R, R), bool)
    expected[32:40, 16:32] = True
    expected[0:4, 0:4] = True  # the Effusion box
    assert np.array_equal(mask, expected)
    tiny = ds[2]["mask"].numpy()  # a 3 px nodule box still marks one model pixel
    assert tiny.sum() >= 1 and tiny[10, 51]
    # 16-bit and RGBA PNGs decode to the same display range as the 8-bit ones
    for i in (1, 2):
        assert -2.0 <= float(ds[i]["image"].min()) < -1.5 and float(ds[i]["image"].max()) > 1.5


# ------------------------------------------------------------------------ CheXpert
def _ptx(records: list[Any]) -> list[float]:
    return [float(r.labels[0]) for r in records]


def test_chexpert_policies_and_frontal_filter(tmp_path: Path) -> None:
    csv_path = write_chexpert(tmp_path)
    ignore = load_chexpert(csv_path, tmp_path, uncertain="ignore")
    assert [r.patient_id for r in ignore] == [
        "patient00001", "patient00002", "patient00003", "patient00004", "patient00005"
    ]  # fmt: skip
    assert ignore[0].image_id == "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal"
    values = _ptx(ignore)
    assert math.isnan(values[0]) and values[1:4] == [1.0, 0.0, 0.0] and math.isnan(values[4])
    assert _ptx(load_chexpert(csv_path, tmp_path, uncertain="zeros")) == [0, 1, 0, 0, 0]
    assert _ptx(load_chexpert(csv_path, tmp_path, uncertain="ones")) == [1, 1, 0, 0, 1]
    rnd = _ptx(load_chexpert(csv_path, tmp_path, uncertain="random", seed=7))
    lo, hi = RANDOM_UNCERTAIN_RANGE
    assert lo <= rnd[0] <= hi and lo <= rnd[4] <= hi and rnd[1:4] == [1.0, 0.0, 0.0]
    assert rnd == _ptx(load_chexpert(csv_path, tmp_path, uncertain="random", seed=7))
    assert rnd != _ptx(load_chexpert(csv_path, tmp_path, uncertain="random", seed=8))
    # the random draw of an image does not depend on the frontal filter or the label set
    everything = load_chexpert(csv_path, tmp_path, "all", "random", frontal_only=False, seed=7)
    assert len(everything) == 6 and everything[0].labels.shape == (14,)
    assert float(everything[0].labels[CHEXPERT_LABELS.index("Pneumothorax")]) == rnd[0]
    row = load_chexpert(csv_path, tmp_path, labels="all")[1].labels
    assert row[CHEXPERT_LABELS.index("Support Devices")] == 1.0
    assert math.isnan(row[CHEXPERT_LABELS.index("Edema")]) and row[0] == 0.0  # blank -> 0
    # root may be the CheXpert-v1.0-small folder itself
    assert len(load_chexpert(csv_path, csv_path.parent)) == 5
    with pytest.raises(ValueError, match="uncertain"):
        load_chexpert(csv_path, tmp_path, uncertain="maybe")


def test_chexpert_loader(tmp_path: Path) -> None:
    csv_path = write_chexpert(tmp_path)
    records = load_chexpert(csv_path, tmp_path, labels="all")
    ds = CXRDataset(records, R, cache=PreprocessCache(tmp_path / "c"))
    batches = iterate(ds)
    check_batches(batches, 5, 14)
    assert torch.isnan(batches[0]["label"][0, CHEXPERT_LABELS.index("Pneumothorax")])
    check_batches(iterate(ds, workers=2), 5, 14)
    # 96 x 80 letterboxed: columns padded with the pad value (-2)
    image = ds[0]["image"][0]
    assert float(image[:, 0].max()) == -2.0 and float(image[:, R // 2].max()) > -2.0
