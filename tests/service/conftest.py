"""Service test fixtures: small trained models, phantom DICOMs, real bad inputs."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import JPEG2000Lossless

from cxrmodel.manifest import read_manifest
from cxrmodel.vocab import FileKind
from imaging.phantoms.acquisition import site_profile
from imaging.phantoms.dataset import Phantom, encode_phantom, generate_phantom
from service.app import create_app
from service.settings import Settings
from tests.conftest import build_dataset, make_dicom, pydicom_file, to_bytes

#: identifiers written into test DICOMs; they must never come back out
PATIENT_NAME = "Zyxwvut^Qponmlk"
PATIENT_ID = "PID-99887766-SECRET"


def model_file(models_dir: Path, resolution: int, kind: str) -> Path:
    """The path of the ``kind`` file (onnx, pt, ood) of the model at ``resolution``."""
    entry = read_manifest(models_dir).by_resolution()[resolution]
    return entry.path_of(FileKind(kind), models_dir)


def phantom(index: int, *, size: int = 1024, positive: bool = True, seed: int = 5) -> Phantom:
    return generate_phantom(
        seed, index, "a", size, pneumothorax=positive, size_fraction=0.9 if positive else None
    )


def phantom_dicom(
    ph: Phantom, *, transfer_syntax: str = "1.2.840.10008.1.2.1", bits_stored: int = 12
) -> bytes:
    """The phantom as DICOM bytes, stored as its site stores its training sets (so the
    models see it in distribution), with a patient name and id set (to check they never
    leak)."""
    data, _ = encode_phantom(
        ph,
        site_profile(ph.metadata["site"]),
        transfer_syntax=transfer_syntax,
        bits_stored=bits_stored,
        patient_name=PATIENT_NAME,
        patient_id=PATIENT_ID,
    )
    return data


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _huge_header() -> bytes:
    ramp = np.tile(np.arange(64, dtype=np.uint16), (64, 1))
    ds = build_dataset(ramp, PatientName=PATIENT_NAME, PatientID=PATIENT_ID)
    del ds.Rows, ds.Columns
    ds.add_new(0x00280010, "UL", 100_000)
    ds.add_new(0x00280011, "UL", 100_000)
    return to_bytes(ds)


def _multi_frame() -> bytes:
    ramp = np.tile(np.arange(64, dtype=np.uint16), (64, 1))
    ds = build_dataset(ramp, PatientName=PATIENT_NAME, PatientID=PATIENT_ID)
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([ramp, ramp]).tobytes()
    return to_bytes(ds)


def _truncated_j2k() -> bytes:
    data = pydicom_file("RG1_J2KR.dcm")
    return data[: int(len(data) * 0.9)]


def _undecodable_syntax() -> bytes:
    ramp = np.tile(np.arange(64, dtype=np.uint16), (64, 1))
    ds = build_dataset(ramp, transfer_syntax=JPEG2000Lossless)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([ramp.tobytes()])
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buffer.getvalue()


def bad_inputs() -> dict[str, tuple[bytes, int, str]]:
    """Real bad uploads: name -> (bytes, expected HTTP status, expected error code)."""
    truncated = pydicom_file("RG1_UNCR.dcm")
    return {
        "random-bytes": (np.random.default_rng(7).bytes(20_000), 400, "not_dicom"),
        "png": (_png(), 400, "not_dicom"),
        "text": (b"PatientName=" + PATIENT_NAME.encode() + b"\n" * 10, 400, "not_dicom"),
        "dicm-then-garbage": (
            bytes(128) + b"DICM" + np.random.default_rng(8).bytes(4000),
            400,
            "corrupt_dicom",
        ),
        "truncated-uncompressed": (truncated[: len(truncated) // 2], 400, "truncated_dicom"),
        "truncated-j2k": (_truncated_j2k(), 400, "truncated_dicom"),
        "no-pixel-data": (
            make_dicom(None, PatientName=PATIENT_NAME, PatientID=PATIENT_ID),
            422,
            "no_pixel_data",
        ),
        "structured-report": (pydicom_file("test-SR.dcm"), 422, "no_pixel_data"),
        "colour": (pydicom_file("SC_rgb.dcm"), 422, "colour_image"),
        "multi-frame": (_multi_frame(), 422, "multi_frame"),
        "undecodable-syntax": (_undecodable_syntax(), 422, "unsupported_transfer_syntax"),
        "header-100000x100000": (_huge_header(), 422, "image_too_large"),
    }


def make_client(models: Path, **overrides: Any) -> TestClient:
    """A client over a fresh app; its job store lives in a new temporary directory unless
    ``data_dir`` or ``jobs_url`` is given."""
    overrides.setdefault("data_dir", Path(tempfile.mkdtemp(prefix="sharpcxr-data-")))
    settings = Settings(models_dir=models, **overrides)
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(models_dir: Path) -> Iterator[TestClient]:
    with make_client(models_dir, default_resolution=256) as c:
        yield c
